// Which UDP conntrack entries a sync must delete, as a pure function of the model
// before and after it. A UDP "connection" is only a conntrack entry, refreshed by every
// datagram: flows to an endpoint that left would stick to it until the entry times
// out. Draining endpoints (serving and terminating) are the exception: their open flows
// are meant to keep going, so their entries stay, as TCP's always do.
import type { Family, ProxyModel } from './model.ts';

export interface StaleEndpoint {
  ip: string;
  family: Family;
}

export function staleUdpEndpoints(before: ProxyModel, after: ProxyModel): StaleEndpoint[] {
  // Ports are immutable and reused while unchanged: only UDP ports that are new objects can have lost endpoints.
  const afterUdp = after.ports.filter((p) => p.protocol === 'udp');
  const unchanged = new Set(afterUdp);
  const changed = before.ports.filter((p) => p.protocol === 'udp' && !unchanged.has(p));
  if (!changed.length) return [];
  const kept = new Map(afterUdp.map((p) => [p.id, new Set([...p.clusterEndpoints, ...p.externalEndpoints].map((e) => e.ip).concat(p.terminatingEndpoints.map((e) => e.slice(0, e.lastIndexOf(':')))))]));
  const stale = new Map<string, StaleEndpoint>();
  for (const p of changed) {
    const keep = kept.get(p.id) ?? new Set<string>();
    for (const e of [...p.clusterEndpoints, ...p.externalEndpoints]) if (!keep.has(e.ip)) stale.set(e.ip, { ip: e.ip, family: p.family });
  }
  return [...stale.values()];
}
