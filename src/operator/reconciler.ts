// Reconcile one ExternalBackend: compute what should exist (desired.ts), compare with
// the informer caches, and write only what differs. Level-triggered: the same call
// handles creation, edits, repairs of hand-edited or deleted objects, and resyncs.
import type { Logger } from '../log.ts';
import type { ReconcileResult } from '../runtime/controller.ts';
import type { EventRecorder } from '../runtime/events.ts';
import type { Informer } from '../runtime/informer.ts';
import { isNotFound, isRejected, resourcePath, type ApiError, type KubeClient } from '../runtime/kube-client.ts';
import { outsidePorts, POLICY_REASON, refuseByPolicy, refuseSpecByPolicy, type AddressPolicy, type PolicyRefusal } from './address-policy.ts';
import { NO_POLICY, type AddressResolver, type PolicyCheck } from './address-resolver.ts';
import type { ProbeScheduler } from '../probes/scheduler.ts';
import { planProbes } from '../probes/targets.ts';
import { initialHealth, type TargetHealth } from '../probes/threshold.ts';
import { ALWAYS_HEALTHY, desiredState, isHeadless, stableJson, type HealthLookup, type ResolvedAddress } from './desired.ts';
import type { TlsSecrets } from './tls-secrets.ts';
import { removeMatching, type Counter, type Gauge } from '../runtime/metrics.ts';
import { decideFailover, recheckAfterMs, type PortDecision } from './failover.ts';
import { computeStatus, type Conflict } from './status.ts';
import {
  API_VERSION,
  GROUP,
  KIND,
  PLURAL,
  VERSION,
  type ExternalBackend,
  type BackendPort,
  type ExternalBackendStatus,
  VOLATILE_ADDRESS_FIELDS,
} from '../api/external-backend.ts';
import type { ExternalBackendPolicy } from '../api/external-backend-policy.ts';
import { BACKEND_LABEL, FIELD_MANAGER, LAST_CHANGE_TRIGGER_TIME } from '../api/labels.ts';
import type { KubeObject } from '../runtime/kube-object.ts';

export interface ReconcilerDeps {
  client: KubeClient;
  backends: Informer<ExternalBackend>;
  services: Informer<KubeObject>;
  slices: Informer<KubeObject>;
  endpoints: Informer<KubeObject>;
  resolver: AddressResolver;
  policy: () => AddressPolicy;
  /** The ExternalBackendPolicies in force for a namespace; without it none apply. */
  tenancy?: (namespace: string) => Tenancy;
  /** Runs health probes; without it every address is healthy. */
  probes?: ProbeScheduler;
  tlsSecrets?: TlsSecrets;
  events: EventRecorder;
  log: Logger;
  failoverMetrics?: FailoverMetrics;
}

export interface FailoverMetrics {
  /** Active priority per backend and port (-1: no group serves). */
  activePriority: Gauge<'namespace' | 'backend' | 'port'>;
  /** Changes of the active group, by direction (failover, failback). */
  failovers: Counter<'namespace' | 'backend' | 'port' | 'direction'>;
}

export interface Tenancy {
  /** Every ExternalBackendPolicy; which match is decided against `labels`. */
  policies: ExternalBackendPolicy[];
  labels: Record<string, string>;
  requirePolicy: boolean;
}

const CONFLICT_RECHECK_MS = 30_000;

/** The namespace's policies as the resolver asks about one address (as written, or one IP of it). */
function policyCheck(eb: ExternalBackend, tenancy: Tenancy | undefined): PolicyCheck {
  if (!tenancy) return NO_POLICY;
  return (address, ip) => {
    const ports = outsidePorts(eb.spec, address);
    return refuseByPolicy(tenancy.policies, tenancy.labels, ip === undefined ? { hostname: address.hostname, ports } : { ip, ports }, tenancy);
  };
}

/** Everything refused as a whole: no lookups, no probes, nothing published. */
function refusedWhole(eb: ExternalBackend, refusal: PolicyRefusal): ResolvedAddress[] {
  return eb.spec.addresses.map((spec) => ({ spec, key: spec.ip ?? spec.hostname!, ips: [], problem: { reason: POLICY_REASON, message: refusal.message } }));
}

const paths = {
  service: (ns: string, name?: string) => resourcePath({ group: '', version: 'v1', plural: 'services', namespace: ns, name }),
  endpoints: (ns: string, name?: string) => resourcePath({ group: '', version: 'v1', plural: 'endpoints', namespace: ns, name }),
  slice: (ns: string, name?: string) => resourcePath({ group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', namespace: ns, name }),
  status: (ns: string, name: string) => resourcePath({ group: GROUP, version: VERSION, plural: PLURAL, namespace: ns, name, subresource: 'status' }),
};

/**
 * True when every field we set in `desired` has the same value in `observed`. Extra
 * fields in `observed` (server defaults, other managers' labels) do not count; lists
 * must match in length, because we own them whole.
 */
export function containsDesired(observed: unknown, desired: unknown): boolean {
  if (desired === null || typeof desired !== 'object') return observed === desired;
  if (Array.isArray(desired)) {
    return Array.isArray(observed) && observed.length === desired.length && desired.every((d, i) => containsDesired(observed[i], d));
  }
  if (observed === null || typeof observed !== 'object' || Array.isArray(observed)) return false;
  const o = observed as Record<string, unknown>;
  return Object.entries(desired).every(([k, v]) => containsDesired(o[k], v));
}

function ownedBy(obj: KubeObject, eb: ExternalBackend): boolean {
  return !!obj.metadata.ownerReferences?.some((r) => r.controller && r.uid === eb.metadata.uid);
}

/** Equal but for per-probe counters and times, which alone never justify a write. */
function statusEqual(a: ExternalBackendStatus | undefined, b: ExternalBackendStatus): boolean {
  const strip = (s: ExternalBackendStatus | undefined) => ({
    ...s,
    addresses: s?.addresses?.map((x) => Object.fromEntries(Object.entries(x).filter(([k]) => !(VOLATILE_ADDRESS_FIELDS as readonly string[]).includes(k)))),
  });
  return stableJson(strip(a)) === stableJson(strip(b));
}

type SliceView = { metadata: KubeObject['metadata']; ports?: { name?: string }[]; endpoints?: { addresses: string[]; conditions?: { serving?: boolean } }[] };

/** Whether ip is published as serving for port, from our current slices (before the first probe). */
function publishedHealth(slices: SliceView[]): (ip: string, port: BackendPort) => boolean | undefined {
  return (ip, port) => {
    for (const s of slices) {
      if (!s.ports?.some((p) => (p.name ?? '') === (port.name ?? ''))) continue;
      const e = s.endpoints?.find((x) => x.addresses.includes(ip));
      if (e) return e.conditions?.serving !== false;
    }
    return undefined;
  };
}

interface HealthView {
  health: HealthLookup;
  probes: (ip: string) => TargetHealth[];
  problems: string[];
}

/** When an IP's probes last turned healthy: the newest transition of its healthy targets. */
function healthySince(view: HealthView): (ip: string) => number | undefined {
  return (ip) => {
    const times = view.probes(ip).filter((s) => s.healthy && s.lastTransitionTime).map((s) => Date.parse(s.lastTransitionTime!));
    return times.length ? Math.max(...times) : undefined;
  };
}

/** Schedules the backend's probes and answers health from their current results. */
async function healthView(deps: ReconcilerDeps, eb: ExternalBackend, resolved: ResolvedAddress[], owner: string, mine: KubeObject[]): Promise<HealthView> {
  const scheduler = deps.probes;
  if (!scheduler || !eb.spec.healthCheck) {
    scheduler?.removeOwner(owner);
    return { health: ALWAYS_HEALTHY, probes: () => [], problems: [] };
  }
  const { tls, problem } = (await deps.tlsSecrets?.material(eb.metadata.namespace!, eb.spec.healthCheck.tls)) ?? {};
  const published = publishedHealth(mine);
  const plan = planProbes(eb, resolved, tls, published);
  scheduler.setTargets(owner, plan.targets);
  const byIp = new Map<string, string[]>();
  for (const t of plan.targets) byIp.set(t.ip, [...(byIp.get(t.ip) ?? []), t.key]);
  const state = (key: string, ip: string, port?: BackendPort): TargetHealth => scheduler.health(key) ?? initialHealth(port ? published(ip, port) : undefined);
  return {
    health: (ip, port) => {
      const key = plan.keyFor(ip, port);
      return key ? state(key, ip, port).healthy : true;
    },
    probes: (ip) => (byIp.get(ip) ?? []).map((k) => state(k, ip)),
    problems: [...plan.problems, ...(problem ? [problem] : [])],
  };
}

/**
 * Deletes the object with this uid. Already gone is success; anything else (403, 409
 * because it was replaced, 500, a timeout) is thrown, so the reconcile is retried and
 * the cache keeps the object until it really is gone.
 */
export async function deleteIgnoringNotFound(client: KubeClient, path: string, uid: string | undefined): Promise<void> {
  try {
    await client.delete(path, {}, uid ? { preconditions: { uid } } : undefined);
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
}

/** Reads from the cache, falling back to a GET for objects our label selector cannot see (someone else's). */
async function observe(client: KubeClient, cache: Informer<KubeObject>, key: string, path: string): Promise<KubeObject | undefined> {
  const cached = cache.get(key);
  if (cached) return cached;
  try {
    return await client.get<KubeObject>(path);
  } catch (err) {
    if (isNotFound(err)) return undefined;
    throw err;
  }
}

export async function reconcileExternalBackend(deps: ReconcilerDeps, key: string): Promise<ReconcileResult> {
  const { client, events, log } = deps;
  const eb = deps.backends.get(key);
  // Gone or going: the garbage collector removes what we own through ownerReferences.
  if (!eb || eb.metadata.deletionTimestamp) {
    deps.probes?.removeOwner(key);
    const [namespace, backend] = key.split('/');
    if (deps.failoverMetrics) await removeMatching(deps.failoverMetrics.activePriority, { namespace: namespace!, backend: backend! });
    return {};
  }
  const ns = eb.metadata.namespace!;
  const name = eb.metadata.name;

  const tenancy = deps.tenancy?.(ns);
  const specRefusal = tenancy ? refuseSpecByPolicy(tenancy.policies, tenancy.labels, eb.spec, tenancy) : undefined;
  const { resolved, refreshAfterMs } = specRefusal ? { resolved: refusedWhole(eb, specRefusal), refreshAfterMs: undefined } : await deps.resolver.resolve(eb.spec.addresses, deps.policy(), policyCheck(eb, tenancy));
  // This backend's slices, read once from the cache for both health and slice writes.
  const mine = deps.slices.list().filter((s) => s.metadata.namespace === ns && s.metadata.labels?.[BACKEND_LABEL] === name);
  const view = await healthView(deps, eb, resolved, key, mine);
  const health = view.health;
  const nowMs = Date.now();
  const now = new Date(nowMs).toISOString();
  const failover = decideFailover({ eb, resolved, health, nowMs, healthySinceMs: healthySince(view) });
  const computed = desiredState(eb, resolved, health, failover);
  const desired = view.problems.length ? { ...computed, problems: [...computed.problems, ...view.problems] } : computed;

  // The Service: ours, or someone else's we must not touch.
  let service = await observe(client, deps.services, key, paths.service(ns, name));
  let conflict: Conflict | undefined;
  if (service && !ownedBy(service, eb)) {
    conflict = { reason: 'ServiceConflict', message: `Service ${ns}/${name} exists and is not owned by this ExternalBackend; it is left untouched` };
  } else if (specRefusal) {
    // A Service type the policy forbids (a NodePort open on every node) must not stay, nor any other of a refused backend.
    if (service) {
      await deleteIgnoringNotFound(client, paths.service(ns, name), service.metadata.uid);
      deps.services.assumeDeleted(key);
      service = undefined;
    }
  } else {
    if (service && needsRecreate(service, eb)) {
      events.event(eb as unknown as KubeObject, 'Normal', 'RecreatingService', `Service ${name} is recreated: its cluster IP cannot change in place (${String((service.spec as { clusterIP?: string }).clusterIP)} -> ${isHeadless(eb) ? 'None' : (eb.spec.service?.clusterIP ?? 'allocated')})`);
      await deleteIgnoringNotFound(client, paths.service(ns, name), service.metadata.uid);
      service = undefined;
    }
    if (!service || !containsDesired(service, desired.service)) {
      if (service) await dropForeignPorts(client, service, desired.service);
      try {
        service = await client.apply<KubeObject>(paths.service(ns, name), desired.service, FIELD_MANAGER);
        deps.services.assume(service);
      } catch (err) {
        // Semantic rejection by the API server (e.g. a nodePort out of range): tell the user.
        if (isRejected(err)) conflict = rejection('Service', name, err);
        else throw err;
      }
    }
  }

  conflict ??= await reconcileSlices(deps, eb, mine, desired.slices, now);
  conflict ??= await reconcileEndpoints(deps, eb, desired.endpoints);

  const spec = service?.spec as { clusterIP?: string; ipFamilies?: string[] } | undefined;
  const clusterIP = spec?.clusterIP;
  const serviceFamilies = clusterIP && clusterIP !== 'None' ? spec?.ipFamilies?.map((f): 4 | 6 => (f === 'IPv6' ? 6 : 4)) : undefined;
  const status = computeStatus({ eb, resolved, health, desired, conflict, policyRefusal: specRefusal, clusterIP, serviceFamilies, now, probes: view.probes });
  if (!statusEqual(eb.status, status)) {
    deps.backends.assume(await client.apply<ExternalBackend>(paths.status(ns, name), { apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace: ns }, status }, FIELD_MANAGER));
    emitTransitionEvents(events, eb, eb.status, status);
    emitPolicyRefusals(events, eb, eb.status, resolved);
    emitFailoverEvents(deps, eb, failover, status);
  }
  for (const [port, d] of failover) {
    deps.failoverMetrics?.activePriority.set({ namespace: ns, backend: name, port }, d.active ?? -1);
    // A series from the start, so increase() (the ExtBackendFailedOver alert) sees the first failover.
    deps.failoverMetrics?.failovers.inc({ namespace: ns, backend: name, port, direction: 'failover' }, 0);
  }
  if (conflict) log.debug('not writing owned objects', { key, reason: conflict.reason });

  // The failback delay is level-triggered: look again when it runs out.
  const requeue = [refreshAfterMs, conflict ? CONFLICT_RECHECK_MS : undefined, recheckAfterMs(failover.values(), nowMs)].filter((v): v is number => v !== undefined);
  return requeue.length ? { requeueAfterMs: Math.min(...requeue) } : {};
}

type ServicePort = { port: number; protocol?: string };

/**
 * Service ports are a list keyed by port and protocol, so server-side apply cannot
 * remove an item another manager put there (e.g. a hand edit of our port number);
 * the API server would then reject our apply as a duplicate port name. Put our list
 * back first; the apply that follows takes ownership again.
 */
async function dropForeignPorts(client: KubeClient, service: KubeObject, desired: KubeObject): Promise<void> {
  const key = (p: ServicePort) => `${p.port}/${p.protocol ?? 'TCP'}`;
  const wanted = (desired.spec as { ports: ServicePort[] }).ports;
  const observed = (service.spec as { ports?: ServicePort[] }).ports ?? [];
  const keys = new Set(wanted.map(key));
  if (observed.every((p) => keys.has(key(p)))) return;
  const ns = service.metadata.namespace!;
  await client.patch(paths.service(ns, service.metadata.name), [
    { op: 'test', path: '/metadata/resourceVersion', value: service.metadata.resourceVersion },
    { op: 'replace', path: '/spec/ports', value: wanted },
  ], 'json');
}

/** clusterIP is immutable: switching to or from Headless, or asking for another IP, needs a new Service. */
function needsRecreate(service: KubeObject, eb: ExternalBackend): boolean {
  const observed = (service.spec as { clusterIP?: string }).clusterIP;
  if (observed === undefined) return false;
  if ((observed === 'None') !== isHeadless(eb)) return true;
  const wanted = eb.spec.service?.clusterIP;
  return !!wanted && !isHeadless(eb) && observed !== wanted;
}

/**
 * What the API server refused and why, in its own words. The CRD rejects what it can
 * see up front; this covers the rest (and any gap between the two), so a spec the API
 * server will never take shows up in status instead of as a retry loop.
 */
function rejection(kind: string, name: string, err: ApiError): Conflict {
  return { reason: `${kind}Rejected`, message: `the API server rejected ${kind} ${name}: ${err.status.message ?? err.message}` };
}

/** Writes the slices that differ and deletes stale ones; a slice the API server refuses ends the pass with a Conflict. */
async function reconcileSlices(deps: ReconcilerDeps, eb: ExternalBackend, mine: KubeObject[], desired: KubeObject[], now: string): Promise<Conflict | undefined> {
  const ns = eb.metadata.namespace!;
  const observed = new Map(mine.filter((s) => ownedBy(s, eb)).map((s) => [s.metadata.name, s]));
  for (const slice of desired) {
    const current = observed.get(slice.metadata.name);
    observed.delete(slice.metadata.name);
    if (current && containsDesired(current, slice)) continue;
    // The agent measures network-programming latency from this annotation.
    const body = { ...slice, metadata: { ...slice.metadata, annotations: { ...slice.metadata.annotations, [LAST_CHANGE_TRIGGER_TIME]: now } } };
    try {
      deps.slices.assume(await deps.client.apply<KubeObject>(paths.slice(ns, slice.metadata.name), body, FIELD_MANAGER));
    } catch (err) {
      if (isRejected(err)) return rejection('EndpointSlice', slice.metadata.name, err);
      throw err;
    }
  }
  for (const stale of observed.values()) {
    await deleteIgnoringNotFound(deps.client, paths.slice(ns, stale.metadata.name), stale.metadata.uid);
    deps.slices.assumeDeleted(`${ns}/${stale.metadata.name}`);
  }
  return undefined;
}

async function reconcileEndpoints(deps: ReconcilerDeps, eb: ExternalBackend, desired: KubeObject | undefined): Promise<Conflict | undefined> {
  const ns = eb.metadata.namespace!;
  const name = eb.metadata.name;
  const key = `${ns}/${name}`;
  const current = desired ? await observe(deps.client, deps.endpoints, key, paths.endpoints(ns, name)) : deps.endpoints.get(key);
  if (current && !ownedBy(current, eb)) {
    return desired ? { reason: 'EndpointsConflict', message: `Endpoints ${ns}/${name} exists and is not owned by this ExternalBackend; it is left untouched` } : undefined;
  }
  if (!desired) {
    if (current) {
      await deleteIgnoringNotFound(deps.client, paths.endpoints(ns, name), current.metadata.uid);
      deps.endpoints.assumeDeleted(key);
    }
    return undefined;
  }
  if (current && containsDesired(current, desired)) return undefined;
  try {
    deps.endpoints.assume(await deps.client.apply<KubeObject>(paths.endpoints(ns, name), desired, FIELD_MANAGER));
  } catch (err) {
    if (isRejected(err)) return rejection('Endpoints', name, err);
    throw err;
  }
  return undefined;
}

/** One Warning per address an ExternalBackendPolicy newly refuses (the previous status did not show it). */
function emitPolicyRefusals(events: EventRecorder, eb: ExternalBackend, before: ExternalBackendStatus | undefined, resolved: ResolvedAddress[]): void {
  const shown = new Set((before?.addresses ?? []).flatMap((a) => [a.message ?? '']));
  for (const r of resolved) {
    const messages = [...(r.problem?.reason === POLICY_REASON ? [r.problem.message] : []), ...(r.refused ?? []).filter((x) => x.policy).map((x) => x.message)];
    for (const message of new Set(messages)) {
      if (![...shown].some((s) => s.includes(message))) events.event(eb as unknown as KubeObject, 'Warning', POLICY_REASON, `${r.key}: ${message}`);
    }
  }
}

function emitTransitionEvents(events: EventRecorder, eb: ExternalBackend, before: ExternalBackendStatus | undefined, after: ExternalBackendStatus): void {
  const obj = eb as unknown as KubeObject;
  const get = (s: ExternalBackendStatus | undefined, type: string) => s?.conditions?.find((c) => c.type === type);
  for (const type of ['Accepted', 'Ready', 'Degraded']) {
    const was = get(before, type);
    const now = get(after, type);
    if (!now || (was && was.status === now.status && was.reason === now.reason)) continue;
    if (!was && now.status === 'True' && type !== 'Degraded') continue; // the normal first state is not news
    if (!was && type === 'Degraded' && now.status === 'False') continue;
    const warn = (type === 'Degraded' && now.status === 'True') || (type !== 'Degraded' && now.status === 'False');
    events.event(obj, warn ? 'Warning' : 'Normal', now.reason, now.message);
  }
}

/** One Event per port whose active group changed, with why (the status says the same). */
function emitFailoverEvents(deps: ReconcilerDeps, eb: ExternalBackend, decisions: Map<string, PortDecision>, status: ExternalBackendStatus): void {
  for (const [port, d] of decisions) {
    if (!d.change) continue;
    const group = status.activeGroups?.find((g) => g.port === port);
    const to = d.change.to === undefined ? 'no group (no healthy host)' : `priority ${d.change.to}`;
    const from = d.change.from === undefined ? 'no group' : `priority ${d.change.from}`;
    deps.failoverMetrics?.failovers.inc({ namespace: eb.metadata.namespace!, backend: eb.metadata.name, port, direction: d.change.kind });
    if (d.change.kind === 'failback') {
      const delay = eb.spec.failover?.failbackDelaySeconds ?? 0;
      deps.events.event(eb as unknown as KubeObject, 'Normal', 'FailedBack', `port ${port}: ${from} -> ${to}: healthy again${delay ? ` for ${delay} s (failbackDelaySeconds)` : ''}`);
    } else {
      deps.events.event(eb as unknown as KubeObject, 'Warning', 'FailedOver', `port ${port}: ${from} -> ${to}${group?.message ? `: ${group.message}` : ''}`);
    }
  }
}
