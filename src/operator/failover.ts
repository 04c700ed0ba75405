// Which priority group serves each Service port, as a pure function of the endpoints'
// health, the spec's failover settings and what the last status recorded. Failover is
// immediate (the active group lost its last healthy host, or fell below minReady);
// failback waits until the better group has been healthy for failbackDelaySeconds, so a
// flapping primary never moves traffic. The delay is level-triggered: the status
// records since when the better group has been healthy, and the reconciler requeues
// for the rest of the delay; an operator restart resumes the wait instead of starting
// it over.
//
// Everything is published with standard EndpointSlice conditions, so any proxy that
// follows them (kube-proxy, Cilium, our agent) fails over:
//   active   ready            serving                terminating false
//   standby  ready false      serving (healthy)      terminating false   (never chosen)
//   draining ready false      serving from probes    terminating true    (last resort only)
//   down     ready false      serving false          terminating false
import type { HealthLookup, ResolvedAddress } from './desired.ts';
import type { BackendPort, ExternalBackend, ExternalBackendStatus } from '../api/external-backend.ts';

export const MAX_PRIORITY = 1000;
export const DEFAULT_MIN_READY = 1;

export type Role = 'active' | 'standby' | 'draining' | 'down';

/** Best first: an address with several IPs or ports shows the best role any of them has. */
export const ROLE_ORDER: readonly Role[] = ['active', 'standby', 'draining', 'down'];

export interface FailoverEndpoint {
  ip: string;
  priority: number;
  drain: boolean;
  healthy: boolean;
  /** When its probes last turned healthy (ms since epoch), when known. */
  healthySinceMs?: number;
}

/** What the last status said about one port. */
export interface PortHistory {
  activePriority?: number;
  /** A better group waiting out the failback delay. */
  failback?: { priority: number; healthySinceMs: number };
}

export interface FailoverSettings {
  minReady: number;
  failbackDelayMs: number;
  nowMs: number;
}

export type Change =
  | { kind: 'failover'; from: number | undefined; to: number | undefined }
  | { kind: 'failback'; from: number; to: number };

export interface PortDecision {
  /** The serving group; undefined when no host of the port is healthy and undrained. */
  active?: number;
  /** The active group has fewer than minReady healthy hosts, but no group has more. */
  belowMinReady: boolean;
  /** A better group that is healthy but still inside the failback delay. */
  failback?: { priority: number; healthySinceMs: number; atMs: number };
  /** Set when the active group differs from the recorded one (not on the first decision). */
  change?: Change;
  /** Roles by IP. */
  roles: Map<string, Role>;
}

/** Healthy, undrained hosts per priority, priorities ascending. */
function groups(endpoints: FailoverEndpoint[]): Map<number, FailoverEndpoint[]> {
  const byPriority = new Map<number, FailoverEndpoint[]>();
  for (const e of [...endpoints].sort((a, b) => a.priority - b.priority)) {
    const list = byPriority.get(e.priority) ?? [];
    if (e.healthy && !e.drain) list.push(e);
    byPriority.set(e.priority, list);
  }
  return byPriority;
}

/**
 * Since when a group has had at least minReady healthy hosts without a break, as far as
 * the probes tell: the minReady-th earliest of its hosts' healthy-since times. Unknown
 * times (probe state from before an operator restart) count as long ago.
 */
function groupHealthySince(healthy: FailoverEndpoint[], minReady: number): number {
  const times = healthy.map((e) => e.healthySinceMs ?? 0).sort((a, b) => a - b);
  return times[Math.min(minReady, times.length) - 1] ?? 0;
}

export function decidePort(endpoints: FailoverEndpoint[], settings: FailoverSettings, history: PortHistory = {}): PortDecision {
  const { minReady, failbackDelayMs, nowMs } = settings;
  const byPriority = groups(endpoints);
  const full = [...byPriority].filter(([, h]) => h.length >= minReady).map(([p]) => p);
  // No group has minReady healthy hosts: a partial group still beats refusing every connection.
  const partial = [...byPriority].filter(([, h]) => h.length > 0).map(([p]) => p);
  const eligible = full.length ? full : partial;
  const best = eligible[0];
  const previous = history.activePriority;

  let active = best;
  let failback: PortDecision['failback'];
  if (best !== undefined && previous !== undefined && eligible.includes(previous) && best < previous && failbackDelayMs > 0) {
    // A better group is healthy again while the current one still serves: wait out the delay.
    const recorded = history.failback?.priority === best ? history.failback.healthySinceMs : nowMs;
    const healthySinceMs = Math.max(recorded, groupHealthySince(byPriority.get(best)!, minReady));
    const atMs = healthySinceMs + failbackDelayMs;
    if (nowMs < atMs) {
      active = previous;
      failback = { priority: best, healthySinceMs, atMs };
    }
  }

  const roles = new Map<string, Role>();
  for (const e of endpoints) roles.set(e.ip, !e.healthy ? 'down' : e.drain ? 'draining' : e.priority === active ? 'active' : 'standby');
  const belowMinReady = active !== undefined && byPriority.get(active)!.length < minReady;
  const decision: PortDecision = { ...(active !== undefined ? { active } : {}), belowMinReady, ...(failback ? { failback } : {}), roles };
  if (previous === undefined || previous === active) return decision;
  const change: Change = active !== undefined && active < previous && eligible.includes(previous) ? { kind: 'failback', from: previous, to: active } : { kind: 'failover', from: previous, to: active };
  return { ...decision, change };
}

/** The failback wait still to go, for the reconciler's requeue; undefined when nothing waits. */
export function recheckAfterMs(decisions: Iterable<PortDecision>, nowMs: number): number | undefined {
  const waits = [...decisions].flatMap((d) => (d.failback ? [Math.max(0, d.failback.atMs - nowMs)] : []));
  return waits.length ? Math.min(...waits) : undefined;
}

/** The best role of several (an address with many IPs, an IP with many ports). */
export function bestRole(roles: Role[]): Role | undefined {
  return ROLE_ORDER.find((r) => roles.includes(r));
}

/** A port's key in status and the role lookup: its name, or its number when it has none. */
export function portKey(port: BackendPort): string {
  return port.name || String(port.port);
}

export interface FailoverInput {
  eb: ExternalBackend;
  resolved: ResolvedAddress[];
  health: HealthLookup;
  nowMs: number;
  /** When an IP's probes last turned healthy (ms), when known. */
  healthySinceMs?: (ip: string) => number | undefined;
}

/** What the status recorded per port, read back for the next decision. */
export function historyFromStatus(status: ExternalBackendStatus | undefined): Map<string, PortHistory> {
  const out = new Map<string, PortHistory>();
  for (const g of status?.activeGroups ?? []) {
    const since = g.failback ? Date.parse(g.failback.healthySince) : NaN;
    out.set(g.port, {
      ...(g.priority !== undefined ? { activePriority: g.priority } : {}),
      ...(g.failback && Number.isFinite(since) ? { failback: { priority: g.failback.priority, healthySinceMs: since } } : {}),
    });
  }
  return out;
}

/** The decision for every port of a backend; the same IP listed twice counts once, as in its slices. */
export function decideFailover(input: FailoverInput): Map<string, PortDecision> {
  const { eb, resolved, health, nowMs } = input;
  const settings: FailoverSettings = {
    minReady: eb.spec.failover?.minReady ?? DEFAULT_MIN_READY,
    failbackDelayMs: (eb.spec.failover?.failbackDelaySeconds ?? 0) * 1000,
    nowMs,
  };
  const history = historyFromStatus(eb.status);
  const decisions = new Map<string, PortDecision>();
  for (const port of eb.spec.ports) {
    const seen = new Set<string>();
    const endpoints: FailoverEndpoint[] = [];
    for (const r of resolved) {
      for (const ip of r.ips) {
        if (seen.has(ip)) continue;
        seen.add(ip);
        const since = input.healthySinceMs?.(ip);
        endpoints.push({ ip, priority: r.spec.priority ?? 0, drain: r.spec.drain === true, healthy: health(ip, port), ...(since !== undefined ? { healthySinceMs: since } : {}) });
      }
    }
    decisions.set(portKey(port), decidePort(endpoints, settings, history.get(portKey(port))));
  }
  return decisions;
}

/** The role of ip on port; 'active' for what no decision covers (nothing to fail over from). */
export function roleOf(decisions: Map<string, PortDecision>, ip: string, port: BackendPort): Role {
  return decisions.get(portKey(port))?.roles.get(ip) ?? 'active';
}
