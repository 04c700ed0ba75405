// Which probes an ExternalBackend needs, as a pure function of its spec and resolved
// addresses: one target per IP and probed port, and for each spec port the target
// whose result decides it.
import { parseExpectedStatuses, type ProbeSpec, type TlsMaterial } from './probe.ts';
import type { ProbeTarget } from './scheduler.ts';
import { targetPortFor, type BackendAddress, type BackendPort, type ExternalBackend, type HealthCheckSpec } from '../api/external-backend.ts';

/** A spec address and the IPs it stands for once resolved (the operator's ResolvedAddress is one). */
export interface ProbedAddress {
  spec: BackendAddress;
  ips: string[];
}

export interface ProbePlan {
  targets: ProbeTarget[];
  /** The target deciding the health of `port` on `ip`; undefined when that port is not probed. */
  keyFor(ip: string, port: BackendPort): string | undefined;
  problems: string[];
}

export function probeSpec(hc: HealthCheckSpec, tls: TlsMaterial | undefined): ProbeSpec {
  return {
    type: hc.type,
    timeoutMs: (hc.timeoutSeconds ?? 1) * 1000,
    ...(hc.type === 'http' || hc.type === 'https'
      ? { http: { path: hc.http?.path ?? '/', ...(hc.http?.host ? { host: hc.http.host } : {}), headers: hc.http?.headers ?? [], expected: parseExpectedStatuses(hc.http?.expectedStatuses) } }
      : {}),
    ...((hc.type === 'https' || hc.type === 'grpc') && tls ? { tls } : {}),
    ...(hc.type === 'grpc' ? { grpcService: hc.grpc?.service ?? '' } : {}),
  };
}

export function planProbes(
  eb: ExternalBackend,
  resolved: ProbedAddress[],
  tls: TlsMaterial | undefined,
  published: (ip: string, port: BackendPort) => boolean | undefined,
): ProbePlan {
  const hc = eb.spec.healthCheck;
  const owner = `${eb.metadata.namespace}/${eb.metadata.name}`;
  const mapping = new Map<string, string>(); // `${ip}|${portName or number}` -> target key
  const targets = new Map<string, ProbeTarget>();
  const problems: string[] = [];
  if (!hc) return { targets: [], keyFor: () => undefined, problems };

  const spec = probeSpec(hc, tls);
  const common = {
    owner,
    spec,
    thresholds: { successThreshold: hc.successThreshold ?? 1, failureThreshold: hc.failureThreshold ?? 3 },
    periodMs: (hc.periodSeconds ?? 10) * 1000,
    initialDelayMs: (hc.initialDelaySeconds ?? 0) * 1000,
  };
  const portId = (p: BackendPort): string => p.name ?? String(p.port);
  const named = typeof hc.port === 'string' ? eb.spec.ports.find((p) => p.name === hc.port) : undefined;
  if (typeof hc.port === 'string' && !named) problems.push(`healthCheck.port names port "${hc.port}", which is not in spec.ports`);

  for (const r of resolved) {
    for (const ip of r.ips) {
      const add = (port: number, decides: BackendPort[]): void => {
        const key = `${owner}|${ip}|${port}`;
        for (const p of decides) mapping.set(`${ip}|${portId(p)}`, key);
        if (!targets.has(key)) targets.set(key, { key, ip, port, ...common, publishedHealthy: decides[0] ? published(ip, decides[0]) : undefined });
      };
      if (typeof hc.port === 'number') add(hc.port, eb.spec.ports);
      else if (named) add(targetPortFor(r.spec, named), eb.spec.ports);
      else {
        // Every TCP port on its own. UDP and SCTP cannot be probed by connecting; they
        // follow the address's first TCP port when it has one.
        const tcp = eb.spec.ports.filter((p) => (p.protocol ?? 'TCP') === 'TCP');
        for (const p of tcp) add(targetPortFor(r.spec, p), [p]);
        const first = tcp[0];
        if (first) for (const p of eb.spec.ports.filter((x) => (x.protocol ?? 'TCP') !== 'TCP')) mapping.set(`${ip}|${portId(p)}`, mapping.get(`${ip}|${portId(first)}`)!);
      }
    }
  }
  return { targets: [...targets.values()], keyFor: (ip, port) => mapping.get(`${ip}|${portId(port)}`), problems };
}
