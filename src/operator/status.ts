// The ExternalBackend status as a pure function of what the reconcile saw and did.
import { type DesiredState, type HealthLookup, type ResolvedAddress } from './desired.ts';
import { bestRole, portKey, type PortDecision, type Role } from './failover.ts';
import type { TargetHealth } from '../probes/threshold.ts';
import { parseIP } from '../net/ip.ts';
import { POLICY_REASON } from './address-policy.ts';
import type { ActiveGroupStatus, AddressStatus, Condition, ExternalBackend, ExternalBackendStatus } from '../api/external-backend.ts';

/** Why the operator does not write (all of) the Service, slices or Endpoints: owned by someone else, or refused by the API server. */
export interface Conflict {
  reason: string;
  message: string;
}

export interface StatusInput {
  eb: ExternalBackend;
  resolved: ResolvedAddress[];
  health: HealthLookup;
  desired: DesiredState;
  conflict?: Conflict;
  /** An ExternalBackendPolicy refuses the backend as a whole (its Service or health-check type, --require-policy). */
  policyRefusal?: { message: string };
  clusterIP?: string;
  /** The IP families the Service has cluster IPs for (spec.ipFamilies); unknown or headless: no check. */
  serviceFamilies?: (4 | 6)[];
  now: string;
  /** Probe states of every target of one IP (empty without a health check). */
  probes?: (ip: string) => TargetHealth[];
}

const LIST_LIMIT = 5;

function listSome(items: string[]): string {
  return items.length <= LIST_LIMIT ? items.join(', ') : `${items.slice(0, LIST_LIMIT).join(', ')} and ${items.length - LIST_LIMIT} more`;
}

/** Probe details of an address: the newest times, the worst counters, the last error of a failing target. */
function probeDetails(states: TargetHealth[]): Partial<AddressStatus> {
  const probed = states.filter((s) => s.probed);
  if (!probed.length) return {};
  const newest = (f: (s: TargetHealth) => string | undefined): string | undefined => probed.map(f).filter((v): v is string => !!v).sort().pop();
  const lastProbeTime = newest((s) => s.lastProbeTime);
  const lastTransitionTime = newest((s) => s.lastTransitionTime);
  return {
    ...(lastProbeTime ? { lastProbeTime } : {}),
    ...(lastTransitionTime ? { lastTransitionTime } : {}),
    consecutiveSuccesses: Math.min(...probed.map((s) => s.consecutiveSuccesses)),
    consecutiveFailures: Math.max(...probed.map((s) => s.consecutiveFailures)),
  };
}

export function addressStatuses(
  eb: ExternalBackend,
  resolved: ResolvedAddress[],
  health: HealthLookup,
  probes: (ip: string) => TargetHealth[] = () => [],
  failover: Map<string, PortDecision> = new Map(),
): AddressStatus[] {
  return resolved.map((r) => {
    const states = r.ips.flatMap(probes);
    const roles = r.ips.flatMap((ip) => eb.spec.ports.map((p) => failover.get(portKey(p))?.roles.get(ip) ?? 'active'));
    const role: Role = bestRole(roles) ?? 'down';
    const base = { address: r.key, ...(r.ips.length ? { ips: r.ips } : {}), ...probeDetails(states), priority: r.spec.priority ?? 0, role };
    if (r.problem) return { ...base, ready: false, role: 'down' as const, reason: r.problem.reason, message: r.problem.message };
    const failing = r.ips.flatMap((ip) => eb.spec.ports.filter((p) => !health(ip, p)).map((p) => `${ip}:${p.name ?? p.port}`));
    if (failing.length) {
      const error = states.find((s) => !s.healthy && s.lastError)?.lastError;
      const unprobed = states.length > 0 && states.every((s) => !s.probed);
      const message = unprobed ? 'not probed yet' : `failing health checks on ${listSome(failing)}${error ? `: ${error}` : ''}`;
      return { ...base, ready: false, reason: unprobed ? 'Pending' : 'ProbeFailed', message };
    }
    const refused = r.refused?.length ? { message: `refused: ${r.refused.map((x) => x.message).join('; ')}` } : {};
    return { ...base, ready: true, ...refused };
  });
}

/**
 * A healthy host is still unreachable through the Service when the Service has no
 * cluster IP of its family (IPv6 hosts in a single-stack IPv4 cluster, say): not ready.
 */
function withoutClusterIP(addresses: AddressStatus[], families: (4 | 6)[] | undefined): AddressStatus[] {
  if (!families?.length) return addresses;
  return addresses.map((a) => {
    if (!a.ready || !a.ips?.length) return a;
    const missing = [...new Set(a.ips.map((ip) => parseIP(ip)?.family).filter((f): f is 4 | 6 => f !== undefined && !families.includes(f)))];
    if (!missing.length) return a;
    const which = missing.map((f) => `IPv${f}`).join(' and ');
    const message = `the Service has no ${which} cluster IP (the cluster is not dual-stack), so connections cannot reach ${which} addresses`;
    // A name that resolves to both families still works through the other one.
    return missing.length === new Set(a.ips.map((ip) => parseIP(ip)?.family)).size ? { ...a, ready: false, role: 'down', reason: 'NoClusterIPForFamily', message } : { ...a, message };
  });
}

function condition(type: string, status: boolean, reason: string, message: string, generation: number | undefined, now: string, previous?: Condition[]): Condition {
  const s = status ? 'True' : 'False';
  const old = previous?.find((c) => c.type === type);
  return {
    type,
    status: s,
    ...(generation !== undefined ? { observedGeneration: generation } : {}),
    lastTransitionTime: old && old.status === s ? old.lastTransitionTime : now,
    reason,
    message,
  };
}

/** Why no better group than `active` serves a port, from its hosts' statuses. */
export function groupDownReason(addresses: AddressStatus[], priority: number, minReady: number): string {
  const hosts = addresses.filter((a) => (a.priority ?? 0) === priority);
  const failing = hosts.filter((a) => !a.ready);
  const drained = hosts.filter((a) => a.role === 'draining');
  const error = failing.find((a) => a.message)?.message;
  if (failing.length === hosts.length) return `all ${hosts.length} host${hosts.length === 1 ? '' : 's'} of priority ${priority} failing${error ? `: ${error}` : ''}`;
  if (drained.length + failing.length === hosts.length) return `the hosts of priority ${priority} are drained or failing (${failing.length} failing, ${drained.length} drained)`;
  return `priority ${priority} has ${hosts.length - failing.length - drained.length} healthy undrained host(s), fewer than minReady ${minReady}${error ? `; ${error}` : ''}`;
}

function activeGroups(eb: ExternalBackend, decisions: Map<string, PortDecision>, addresses: AddressStatus[], now: string): ActiveGroupStatus[] {
  const minReady = eb.spec.failover?.minReady ?? 1;
  return eb.spec.ports.map((p) => {
    const key = portKey(p);
    const d = decisions.get(key);
    const old = eb.status?.activeGroups?.find((g) => g.port === key);
    const readyHosts = d ? [...d.roles.values()].filter((r) => r === 'active').length : 0;
    const better = [...new Set(addresses.map((a) => a.priority ?? 0))].filter((x) => d?.active === undefined || x < d.active).sort((a, b) => a - b);
    const message = d?.failback
      ? `priority ${d.failback.priority} healthy again since ${new Date(d.failback.healthySinceMs).toISOString()}; traffic returns to it at ${new Date(d.failback.atMs).toISOString()}`
      : better.length
        ? groupDownReason(addresses, better[0]!, minReady)
        : undefined;
    return {
      port: key,
      ...(d?.active !== undefined ? { priority: d.active } : {}),
      readyHosts,
      lastTransitionTime: old && old.priority === d?.active && old.lastTransitionTime ? old.lastTransitionTime : now,
      ...(d?.failback ? { failback: { priority: d.failback.priority, healthySince: new Date(d.failback.healthySinceMs).toISOString(), at: new Date(d.failback.atMs).toISOString() } } : {}),
      ...(message ? { message } : {}),
    };
  });
}

/** "0" when every port is served by the same group, else per port; "none" when nothing is. */
function activeSummary(groups: ActiveGroupStatus[]): string {
  const values = [...new Set(groups.map((g) => (g.priority === undefined ? 'none' : String(g.priority))))];
  return values.length === 1 ? values[0]! : groups.map((g) => `${g.port}=${g.priority ?? 'none'}`).join(',');
}

/** FailedOver (some port is served by a less preferred group) and Draining: only for backends that use them. */
function failoverConditions(eb: ExternalBackend, resolved: ResolvedAddress[], groups: ActiveGroupStatus[], addresses: AddressStatus[], generation: number | undefined, now: string, previous: Condition[] | undefined): Condition[] {
  const out: Condition[] = [];
  const priorities = [...new Set(eb.spec.addresses.map((a) => a.priority ?? 0))].sort((a, b) => a - b);
  if (priorities.length > 1) {
    const preferred = priorities[0]!;
    const away = groups.filter((g) => g.priority !== preferred);
    const waiting = groups.filter((g) => g.failback);
    out.push(
      away.length
        ? condition('FailedOver', true, waiting.length ? 'FailbackPending' : 'PreferredGroupDown', away.map((g) => `port ${g.port}: served by ${g.priority === undefined ? 'no group' : `priority ${g.priority}`}${g.message ? `: ${g.message}` : ''}`).join('; '), generation, now, previous)
        : condition('FailedOver', false, 'PreferredGroupActive', `every port is served by priority ${preferred}`, generation, now, previous),
    );
  }
  const drainedKeys = new Set(resolved.filter((r) => r.spec.drain).map((r) => r.key));
  const drained = addresses.filter((a) => drainedKeys.has(a.address));
  if (drained.length) {
    const all = drained.length === addresses.length;
    out.push(
      condition('Draining', true, all ? 'AllDrained' : 'Drained', all
        ? `every host is drained: all of them are a last resort, so new connections still reach them (nothing else can take them)`
        : `drained (no new connections while another host can take them; open ones are kept): ${listSome(drained.map((a) => a.address))}`, generation, now, previous),
    );
  }
  return out;
}

export function computeStatus(input: StatusInput): ExternalBackendStatus {
  const { eb, resolved, health, desired, conflict, now } = input;
  const generation = eb.metadata.generation;
  const previous = eb.status?.conditions;
  const addresses = withoutClusterIP(addressStatuses(eb, resolved, health, input.probes, desired.failover), input.serviceFamilies);
  const groups = activeGroups(eb, desired.failover, addresses, now);
  // READY counts hosts taking new connections: healthy standbys and drained hosts do not.
  const readyCount = addresses.filter((a) => a.ready && a.role === 'active').length;
  const healthyCount = addresses.filter((a) => a.ready).length;
  const notReady = addresses.filter((a) => !a.ready);

  const accepted = conflict
    ? condition('Accepted', false, conflict.reason, conflict.message, generation, now, previous)
    : input.policyRefusal
      ? condition('Accepted', false, POLICY_REASON, `nothing is published: ${input.policyRefusal.message}`, generation, now, previous)
    : desired.problems.length
      ? condition('Accepted', false, 'InvalidSpec', `ignored: ${desired.problems.join('; ')}`, generation, now, previous)
      : condition('Accepted', true, 'Accepted', 'the spec is valid and the operator owns the Service', generation, now, previous);

  const portsDown = [...desired.portsWithReadyEndpoints].filter(([, up]) => !up).map(([name]) => name || 'the port');
  // Slices may list hosts no cluster IP leads to: with none of the others ready, nothing answers.
  const unreachable = healthyCount === 0 && addresses.some((a) => a.reason === 'NoClusterIPForFamily');
  const allPortsUp = !conflict && portsDown.length === 0 && !unreachable;
  const ready = conflict
    ? condition('Ready', false, conflict.reason.endsWith('Rejected') ? 'Rejected' : 'NotOwned', conflict.message, generation, now, previous)
    : allPortsUp
      ? condition('Ready', true, 'AllPortsReady', 'every port has at least one ready address', generation, now, previous)
      : healthyCount === 0
        ? condition('Ready', false, 'NoReadyAddresses', 'no address is ready; connections to the Service are refused', generation, now, previous)
        : condition('Ready', false, 'PortsWithoutReadyAddresses', `no ready address for port ${listSome(portsDown)}`, generation, now, previous);

  const degraded = notReady.length
    ? condition('Degraded', true, 'AddressesNotReady', `not ready: ${listSome(notReady.map((a) => `${a.address} (${a.message ?? a.reason})`))}`, generation, now, previous)
    : condition('Degraded', false, 'AllAddressesReady', 'every address is ready', generation, now, previous);

  const state = accepted.status === 'False' && (conflict || input.policyRefusal) ? 'Rejected' : ready.status === 'False' ? 'NotReady' : degraded.status === 'True' ? 'Degraded' : 'Ready';
  return {
    observedGeneration: generation,
    state,
    ready: `${readyCount}/${addresses.length}`,
    readyAddresses: readyCount,
    totalAddresses: addresses.length,
    ...(input.clusterIP ? { clusterIP: input.clusterIP } : {}),
    endpointSlices: conflict ? 0 : desired.slices.length,
    active: activeSummary(groups),
    activeGroups: groups,
    addresses,
    conditions: [accepted, ready, degraded, ...failoverConditions(eb, resolved, groups, addresses, generation, now, previous)],
  };
}
