// The ExternalBackend status as a pure function of what the reconcile saw and did.
import { type DesiredState, type HealthLookup, type ResolvedAddress } from './desired.ts';
import type { TargetHealth } from '../probes/threshold.ts';
import { parseIP } from '../net/ip.ts';
import { POLICY_REASON } from './address-policy.ts';
import type { AddressStatus, Condition, ExternalBackend, ExternalBackendStatus } from '../api/external-backend.ts';

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

export function addressStatuses(eb: ExternalBackend, resolved: ResolvedAddress[], health: HealthLookup, probes: (ip: string) => TargetHealth[] = () => []): AddressStatus[] {
  return resolved.map((r) => {
    const states = r.ips.flatMap(probes);
    const base = { address: r.key, ...(r.ips.length ? { ips: r.ips } : {}), ...probeDetails(states) };
    if (r.problem) return { ...base, ready: false, reason: r.problem.reason, message: r.problem.message };
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
    return missing.length === new Set(a.ips.map((ip) => parseIP(ip)?.family)).size ? { ...a, ready: false, reason: 'NoClusterIPForFamily', message } : { ...a, message };
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

export function computeStatus(input: StatusInput): ExternalBackendStatus {
  const { eb, resolved, health, desired, conflict, now } = input;
  const generation = eb.metadata.generation;
  const previous = eb.status?.conditions;
  const addresses = withoutClusterIP(addressStatuses(eb, resolved, health, input.probes), input.serviceFamilies);
  const readyCount = addresses.filter((a) => a.ready).length;
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
  const unreachable = readyCount === 0 && addresses.some((a) => a.reason === 'NoClusterIPForFamily');
  const allPortsUp = !conflict && portsDown.length === 0 && !unreachable;
  const ready = conflict
    ? condition('Ready', false, conflict.reason.endsWith('Rejected') ? 'Rejected' : 'NotOwned', conflict.message, generation, now, previous)
    : allPortsUp
      ? condition('Ready', true, 'AllPortsReady', 'every port has at least one ready address', generation, now, previous)
      : readyCount === 0
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
    addresses,
    conditions: [accepted, ready, degraded],
  };
}
