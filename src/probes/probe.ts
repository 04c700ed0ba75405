// One health probe of one outside address: TCP connect, HTTP(S) GET (redirects are
// never followed) or gRPC health (grpc.health.v1 over HTTP/2, no gRPC library
// needed). Every probe uses a fresh connection and a hard timeout, and reports
// failures in plain words.
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import { forbiddenAddressReason } from '../net/ip.ts';

export type ProbeType = 'tcp' | 'http' | 'https' | 'grpc';

export interface TlsMaterial {
  serverName?: string;
  insecureSkipVerify?: boolean;
  ca?: string;
  cert?: string;
  key?: string;
}

export interface ProbeSpec {
  type: ProbeType;
  timeoutMs: number;
  http?: { path: string; host?: string; headers: { name: string; value: string }[]; expected: [number, number][] };
  tls?: TlsMaterial;
  grpcService?: string;
}

export interface ProbeResult {
  ok: boolean;
  /** Why it failed, in plain words. */
  error?: string;
  /** 'success' | 'failure' (answered wrongly) | 'timeout' | 'error' (could not talk) */
  outcome: 'success' | 'failure' | 'timeout' | 'error';
}

const USER_AGENT = 'extbackend-probe/1';

function describeError(err: NodeJS.ErrnoException): string {
  // HTTP/2 wraps the socket's error in a stream cancellation: report the cause.
  if (err.code === 'ERR_HTTP2_STREAM_CANCEL' && err.cause instanceof Error) return describeError(err.cause);
  switch (err.code) {
    case 'ECONNREFUSED':
      return 'connection refused';
    case 'EHOSTUNREACH':
      return 'no route to host';
    case 'ENETUNREACH':
      return 'network unreachable';
    case 'ECONNRESET':
      return 'connection reset by peer';
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
      return `TLS: the server's certificate is not signed by a trusted CA (${err.code})`;
    case 'ERR_TLS_CERT_ALTNAME_INVALID':
      return `TLS: the server's certificate is not valid for this name (${err.message})`;
    case 'CERT_HAS_EXPIRED':
      return "TLS: the server's certificate has expired";
    // Node's HTTP client refuses to send these; the spec or Secret must change.
    case 'ERR_UNESCAPED_CHARACTERS':
    case 'ERR_INVALID_CHAR':
    case 'ERR_INVALID_HTTP_TOKEN':
      return `the probe request cannot be sent: ${err.message}`;
    default:
      if (err.code?.startsWith('ERR_OSSL_')) return `TLS: the certificate, key or CA cannot be used (${err.message})`;
      return err.code ? `${err.code}: ${err.message}` : err.message;
  }
}

function tlsOptions(tls: TlsMaterial | undefined): { ca?: string; cert?: string; key?: string; rejectUnauthorized: boolean; servername?: string } {
  return {
    ...(tls?.ca ? { ca: tls.ca } : {}),
    ...(tls?.cert ? { cert: tls.cert } : {}),
    ...(tls?.key ? { key: tls.key } : {}),
    rejectUnauthorized: !tls?.insecureSkipVerify,
    ...(tls?.serverName ? { servername: tls.serverName } : {}),
  };
}

const fail = (err: unknown): ProbeResult => ({ ok: false, outcome: 'error', error: describeError(err instanceof Error ? err : new Error(String(err))) });

/**
 * Runs `attempt` with a hard deadline; `cleanup` tears down whatever it opened. Node's
 * clients throw synchronously on input they refuse (a path with a space, a header
 * value with a newline, a PEM key that does not parse): that is a failed probe with
 * the reason, never an exception out of a promise executor.
 */
function withTimeout(timeoutMs: number, attempt: (finish: (r: ProbeResult) => void) => () => void): Promise<ProbeResult> {
  return new Promise((resolve) => {
    let done = false;
    let cleanup: () => void = () => undefined;
    const finish = (r: ProbeResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      cleanup();
      resolve(r);
    };
    const timer = setTimeout(() => finish({ ok: false, outcome: 'timeout', error: `timed out after ${timeoutMs / 1000} s` }), timeoutMs);
    try {
      cleanup = attempt(finish);
    } catch (err) {
      finish(fail(err));
    }
  });
}

function tcpProbe(ip: string, port: number, spec: ProbeSpec): Promise<ProbeResult> {
  return withTimeout(spec.timeoutMs, (finish) => {
    const socket = net.connect({ host: ip, port });
    socket.once('connect', () => finish({ ok: true, outcome: 'success' }));
    socket.once('error', (err) => finish(fail(err)));
    return () => socket.destroy();
  });
}

function statusExpected(code: number, expected: [number, number][]): boolean {
  return expected.some(([lo, hi]) => code >= lo && code <= hi);
}

function httpProbe(ip: string, port: number, spec: ProbeSpec): Promise<ProbeResult> {
  const h = spec.http ?? { path: '/', headers: [], expected: [[200, 399]] };
  const secure = spec.type === 'https';
  const hostHeader = h.host ?? (net.isIPv6(ip) ? `[${ip}]:${port}` : `${ip}:${port}`);
  return withTimeout(spec.timeoutMs, (finish) => {
    const headers: Record<string, string> = { 'user-agent': USER_AGENT, accept: '*/*', connection: 'close', host: hostHeader };
    for (const { name, value } of h.headers) headers[name.toLowerCase()] = value;
    const options = { host: ip, port, path: h.path, method: 'GET', headers, agent: false as const, ...(secure ? tlsOptions(spec.tls) : {}) };
    const req = (secure ? https : http).request(options, (res) => {
      res.resume();
      const code = res.statusCode ?? 0;
      if (statusExpected(code, h.expected)) finish({ ok: true, outcome: 'success' });
      else {
        const wanted = h.expected.map(([lo, hi]) => (lo === hi ? `${lo}` : `${lo}-${hi}`)).join(', ');
        const where = code >= 300 && code < 400 && res.headers.location ? ` redirecting to ${res.headers.location} (redirects are not followed)` : '';
        finish({ ok: false, outcome: 'failure', error: `HTTP ${code}${where}; expected ${wanted}` });
      }
    });
    req.once('error', (err) => finish(fail(err)));
    req.end();
    return () => req.destroy();
  });
}

const GRPC_STATUS = ['UNKNOWN', 'SERVING', 'NOT_SERVING', 'SERVICE_UNKNOWN'];

/** grpc.health.v1.HealthCheckRequest{service} as a length-prefixed gRPC message. */
function healthCheckRequest(service: string): Buffer {
  const name = Buffer.from(service, 'utf8');
  const fields = name.length ? Buffer.concat([Buffer.from([0x0a]), varint(name.length), name]) : Buffer.alloc(0);
  const prefix = Buffer.alloc(5);
  prefix.writeUInt32BE(fields.length, 1);
  return Buffer.concat([prefix, fields]);
}

function varint(n: number): Buffer {
  const bytes: number[] = [];
  while (n > 0x7f) {
    bytes.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  bytes.push(n);
  return Buffer.from(bytes);
}

/** HealthCheckResponse.status (field 1, varint); 0 (UNKNOWN) when absent. */
function healthCheckStatus(message: Buffer): number {
  const body = message.subarray(5);
  for (let i = 0; i < body.length; ) {
    const tag = body[i++]!;
    if (tag === 0x08) return body[i]! & 0x7f;
    // Skip an unknown length-delimited or varint field.
    if ((tag & 7) === 2) i += 1 + body[i]!;
    else while (body[i++]! & 0x80);
  }
  return 0;
}

function grpcProbe(ip: string, port: number, spec: ProbeSpec): Promise<ProbeResult> {
  const secure = !!spec.tls;
  const authority = `${secure ? 'https' : 'http'}://${net.isIPv6(ip) ? `[${ip}]` : ip}:${port}`;
  return withTimeout(spec.timeoutMs, (finish) => {
    const session = http2.connect(authority, secure ? tlsOptions(spec.tls) : {});
    session.once('error', (err: NodeJS.ErrnoException) => finish(fail(err)));
    const req = session.request({ ':method': 'POST', ':path': '/grpc.health.v1.Health/Check', 'content-type': 'application/grpc', te: 'trailers', 'user-agent': USER_AGENT });
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.once('error', (err: NodeJS.ErrnoException) => finish(fail(err)));
    req.once('trailers', (trailers: http2.IncomingHttpHeaders) => {
      const grpcStatus = Number(trailers['grpc-status'] ?? 0);
      if (grpcStatus !== 0) {
        const message = String(trailers['grpc-message'] ?? '');
        finish({ ok: false, outcome: 'failure', error: `gRPC status ${grpcStatus}${message ? `: ${decodeURIComponent(message)}` : ''}` });
        return;
      }
      const status = healthCheckStatus(Buffer.concat(chunks));
      finish(status === 1 ? { ok: true, outcome: 'success' } : { ok: false, outcome: 'failure', error: `gRPC health status ${GRPC_STATUS[status] ?? status}` });
    });
    req.once('response', (headers) => {
      // A gRPC error without a body arrives as headers-only ("trailers-only" response).
      if (headers['grpc-status'] !== undefined && Number(headers['grpc-status']) !== 0) {
        finish({ ok: false, outcome: 'failure', error: `gRPC status ${String(headers['grpc-status'])}: ${decodeURIComponent(String(headers['grpc-message'] ?? ''))}` });
      }
    });
    req.end(healthCheckRequest(spec.grpcService ?? ''));
    return () => {
      req.destroy();
      session.destroy();
    };
  });
}

/** Never rejects: whatever goes wrong is a failed probe with the reason in plain words. */
export async function runProbe(ip: string, port: number, spec: ProbeSpec): Promise<ProbeResult> {
  // Defence in depth: the address policy already keeps these out of targets.
  const forbidden = forbiddenAddressReason(ip);
  if (forbidden) return { ok: false, outcome: 'error', error: `refusing to probe ${ip}: it is ${forbidden}` };
  try {
    switch (spec.type) {
      case 'tcp':
        return await tcpProbe(ip, port, spec);
      case 'http':
      case 'https':
        return await httpProbe(ip, port, spec);
      case 'grpc':
        return await grpcProbe(ip, port, spec);
    }
  } catch (err) {
    return fail(err);
  }
}

/** "200-399" and "418" into ranges. */
export function parseExpectedStatuses(list: string[] | undefined): [number, number][] {
  if (!list?.length) return [[200, 399]];
  return list.map((s) => {
    const [lo, hi = lo] = s.split('-').map(Number) as [number, number?];
    return [lo, hi];
  });
}
