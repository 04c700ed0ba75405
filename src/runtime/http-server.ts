// /healthz, /readyz (and /livez) and /metrics on one port, as Kubernetes probes and
// Prometheus expect them.
import http from 'node:http';
import type { Registry } from './metrics.ts';

export type Check = () => string | undefined; // undefined = ok, else why not

export interface HealthServerOptions {
  address: string; // "host:port" or ":port"
  metrics: Registry;
  checks: Record<string, Check>; // path (e.g. "/readyz") -> check
}

export function parseListenAddress(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '') || '0.0.0.0';
  const port = Number(address.slice(i + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad listen address "${address}"`);
  return { host, port };
}

export async function startHealthServer(options: HealthServerOptions): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if (path === '/metrics') {
      options.metrics.render().then(
        (page) => res.writeHead(200, { 'content-type': options.metrics.contentType }).end(page),
        (err: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err instanceof Error ? err.message : String(err)}\n`),
      );
      return;
    }
    const check = options.checks[path];
    if (!check) {
      res.writeHead(404).end('not found\n');
      return;
    }
    const failure = check();
    res.writeHead(failure ? 503 : 200, { 'content-type': 'text/plain' }).end(failure ? `${failure}\n` : 'ok\n');
  });
  const { host, port } = parseListenAddress(options.address);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  return server;
}
