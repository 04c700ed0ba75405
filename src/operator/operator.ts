// `extbackend operator`: wires informers, the ExternalBackend controller, leader
// election, the cluster-network facts behind the address policy, and the health server.
import os from 'node:os';
import type { Logger } from '../log.ts';
import { Controller } from '../runtime/controller.ts';
import { ApiEventRecorder } from '../runtime/events.ts';
import { startHealthServer } from '../runtime/http-server.ts';
import { Informer, objectKey } from '../runtime/informer.ts';
import { isNotFound, resourcePath, type KubeClient } from '../runtime/kube-client.ts';
import { LeaderElector } from '../runtime/leader-election.ts';
import { Registry } from '../runtime/metrics.ts';
import { buildAddressPolicy, type AddressPolicy, type ClusterNetworkFacts } from './address-policy.ts';
import { AddressResolver, dnsLookup } from './address-resolver.ts';
import { ProbeScheduler, type SchedulerOptions } from '../probes/scheduler.ts';
import { shortHash } from './desired.ts';
import { TlsSecrets } from './tls-secrets.ts';
import { registerBackendMetrics } from './backend-metrics.ts';
import { reconcileExternalBackend, type ReconcilerDeps } from './reconciler.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { matchingPolicies } from './address-policy.ts';
import { GROUP, PLURAL, VERSION, type ExternalBackend } from '../api/external-backend.ts';
import { POLICY_PLURAL, type ExternalBackendPolicy } from '../api/external-backend-policy.ts';
import { BACKEND_LABEL, SERVICE_NAME_LABEL } from '../api/labels.ts';
import type { KubeObject } from '../runtime/kube-object.ts';

export interface OperatorOptions {
  client: KubeClient;
  log: Logger;
  /** Watch one namespace only; all when undefined. */
  namespace?: string;
  workers: number;
  leaderElect: boolean;
  leaseNamespace: string;
  leaseName: string;
  identity?: string;
  httpAddress?: string;
  allowClusterAddresses: boolean;
  extraServiceCIDRs: string[];
  extraPodCIDRs: string[];
  dnsServers?: string[];
  dnsRefreshMs: number;
  /** --require-policy: a namespace no ExternalBackendPolicy matches may publish nothing. */
  requirePolicy: boolean;
  /** Probes in flight at once, across all backends (default 512). */
  maxConcurrentProbes?: number;
  /** Runs one probe (default: the real one). The fuzz suite replaces it so generated addresses are never contacted. */
  probe?: SchedulerOptions['probe'];
  signal: AbortSignal;
  /** Hand the lease back on shutdown so a successor need not wait it out (default true). */
  releaseLeaseOnStop?: boolean;
}

/** Defaults shared by the CLI, the demo and the tests. */
export const OPERATOR_DEFAULTS = {
  workers: 4,
  leaseName: 'extbackend-operator',
  allowClusterAddresses: false,
  extraServiceCIDRs: [] as string[],
  extraPodCIDRs: [] as string[],
  dnsRefreshMs: 30_000,
  requirePolicy: false,
};

export interface RunningOperator {
  metrics: Registry;
  /** True once caches synced and no key is queued or being reconciled. */
  idle(): boolean;
  /** True while this replica leads (always, without leader election). */
  leading(): boolean;
  /** Resolves when the operator stopped (its signal aborted). A lost lease does not end it: it steps down and campaigns again. */
  done: Promise<'stopped'>;
}

function collectionPath(group: string, version: string, plural: string, namespace?: string): string {
  return resourcePath({ group, version, plural, namespace });
}

interface NodeLike {
  metadata: KubeObject['metadata'];
  spec?: { podCIDR?: string; podCIDRs?: string[] };
  status?: { addresses?: { type: string; address: string }[] };
}
/** The part of a Node the address policy reads. */
function nodeFacts(node: NodeLike): NodeLike {
  const { name, resourceVersion } = node.metadata;
  return {
    metadata: { name, resourceVersion },
    spec: { podCIDR: node.spec?.podCIDR, podCIDRs: node.spec?.podCIDRs },
    status: { addresses: node.status?.addresses?.map(({ type, address }) => ({ type, address })) },
  };
}

function sameNodeFacts(a: NodeLike, b: NodeLike): boolean {
  return JSON.stringify([a.spec, a.status]) === JSON.stringify([b.spec, b.status]);
}

interface ServiceCIDRLike {
  metadata: KubeObject['metadata'];
  spec?: { cidrs?: string[] };
}
interface SliceLike {
  metadata: KubeObject['metadata'];
  endpoints?: { addresses: string[] }[];
}

export async function startOperator(o: OperatorOptions): Promise<RunningOperator> {
  const { client, log } = o;
  const metrics = new Registry();
  const writes = metrics.counter('extbackend_api_writes_total', 'Requests that change something in the API, by verb and resource.', ['verb', 'resource']);
  client.onWrite((verb, resource) => writes.inc({ verb, resource }));
  const leader = metrics.gauge('extbackend_leader', '1 when this replica is the leader.');
  // 0 until elected, so a standby replica's series exist and "no leader" is max() == 0.
  leader.set(0);

  const informer = <T extends { metadata: KubeObject['metadata'] }>(path: string, labelSelector?: string) =>
    new Informer<T>({ client, path, labelSelector, log: log.child({ informer: path }) });

  // Our objects carry the backend label, so the caches hold only what we own.
  const backends = informer<ExternalBackend>(collectionPath(GROUP, VERSION, PLURAL, o.namespace));
  const services = informer<KubeObject>(collectionPath('', 'v1', 'services', o.namespace), BACKEND_LABEL);
  const slices = informer<KubeObject>(collectionPath('discovery.k8s.io', 'v1', 'endpointslices', o.namespace), BACKEND_LABEL);
  registerBackendMetrics(metrics, () => ({ backends: backends.list(), slices: slices.list() }));
  const endpoints = informer<KubeObject>(collectionPath('', 'v1', 'endpoints', o.namespace), BACKEND_LABEL);

  // Facts for the address policy: nodes, service CIDRs, the API server's own endpoints.
  // Of a Node only its pod CIDRs and addresses are kept (not its images and conditions).
  const nodes = new Informer<NodeLike>({ client, path: collectionPath('', 'v1', 'nodes'), log: log.child({ informer: 'nodes' }) }, nodeFacts);
  const apiSlices = informer<SliceLike>(collectionPath('discovery.k8s.io', 'v1', 'endpointslices', 'default'), `${SERVICE_NAME_LABEL}=kubernetes`);
  let serviceCIDRs: Informer<ServiceCIDRLike> | undefined = informer<ServiceCIDRLike>(collectionPath('networking.k8s.io', 'v1', 'servicecidrs'));
  // Started while the API server is away (a restart during an outage): wait for it, do not exit.
  // Returns whether the API server serves the resource at all (a CRD or API not installed: false).
  const served = async (path: string): Promise<boolean> => {
    for (let attempt = 0; ; attempt++) {
      try {
        await client.get(path, { limit: 1 });
        return true;
      } catch (err) {
        if (isNotFound(err)) return false;
        if (o.signal.aborted) throw err;
        if (attempt === 0) log.warn('the API server does not answer yet; retrying', { path, error: (err as Error).message });
        await sleep(Math.min(5_000, 500 * 2 ** attempt), undefined, { signal: o.signal }).catch(() => undefined);
      }
    }
  };
  if (!(await served(collectionPath('networking.k8s.io', 'v1', 'servicecidrs')))) {
    log.info('this cluster has no ServiceCIDR API; using --service-cidr only');
    serviceCIDRs = undefined;
  }
  // ExternalBackendPolicies (cluster-scoped) and the labels they select namespaces by.
  const policies = informer<ExternalBackendPolicy>(collectionPath(GROUP, VERSION, POLICY_PLURAL));
  // An informer on a missing resource would never sync, and the workers would never start.
  const policiesServed = await served(collectionPath(GROUP, VERSION, POLICY_PLURAL));
  if (!policiesServed) log.warn(`the ExternalBackendPolicy CRD is not installed; no policy applies${o.requirePolicy ? ', and --require-policy refuses every backend' : ''}`);
  const namespaces = new Informer<KubeObject>({
    client,
    path: collectionPath('', 'v1', 'namespaces'),
    ...(o.namespace ? { fieldSelector: `metadata.name=${o.namespace}` } : {}),
    log: log.child({ informer: 'namespaces' }),
  });
  const tenancy = (ns: string) => ({ policies: policies.list(), labels: namespaces.get(ns)?.metadata.labels ?? {}, requirePolicy: o.requirePolicy });

  const facts = (): ClusterNetworkFacts => ({
    serviceCIDRs: [...o.extraServiceCIDRs, ...(serviceCIDRs?.list().flatMap((c) => c.spec?.cidrs ?? []) ?? [])],
    podCIDRs: [...o.extraPodCIDRs, ...nodes.list().flatMap((n) => n.spec?.podCIDRs ?? (n.spec?.podCIDR ? [n.spec.podCIDR] : []))],
    nodeIPs: nodes.list().flatMap((n) => (n.status?.addresses ?? []).filter((a) => a.type === 'InternalIP' || a.type === 'ExternalIP').map((a) => a.address)),
    apiServerIPs: apiSlices.list().flatMap((s) => (s.endpoints ?? []).flatMap((e) => e.addresses)),
  });
  const initialFacts = facts();
  let policy: AddressPolicy = buildAddressPolicy(initialFacts, o.allowClusterAddresses);
  let policyHash = shortHash(initialFacts);

  const resolver = new AddressResolver(dnsLookup(o.dnsServers), o.dnsRefreshMs);
  const events = new ApiEventRecorder(client, 'extbackend-operator', log);
  // A readiness flip of any probe target re-reconciles its backend; nothing else does.
  let enqueue: (key: string) => void = () => undefined;
  const probes = new ProbeScheduler({ onChange: (owner) => enqueue(owner), metrics, maxConcurrent: o.maxConcurrentProbes, log: log.child({ component: 'probes' }), ...(o.probe ? { probe: o.probe } : {}) });
  const tlsSecrets = new TlsSecrets(client);
  const failoverMetrics = {
    activePriority: metrics.gauge('extbackend_active_priority', 'The priority group serving each backend port (-1: none).', ['namespace', 'backend', 'port']),
    failovers: metrics.counter('extbackend_failovers_total', 'Changes of the serving priority group, by backend, port and direction (failover, failback).', ['namespace', 'backend', 'port', 'direction']),
  };
  const baseDeps = { backends, services, slices, endpoints, resolver, policy: () => policy, tenancy, probes, tlsSecrets, events, log, failoverMetrics };
  // Writes go through a client fenced by the current term: losing the lease cancels them in flight.
  let deps: ReconcilerDeps = { ...baseDeps, client };
  const controller = new Controller({
    name: 'externalbackend',
    workers: o.workers,
    log,
    metrics,
    reconcile: (key) => reconcileExternalBackend(deps, key),
  });
  // Keys that failed while the API server was away go again as soon as it answers.
  client.onRecovered(() => {
    const keys = controller.queue.retryNow();
    log.info('the API server answers again; retrying failed reconciles now', { keys: keys.length });
  });
  enqueue = (key) => controller.queue.add(key);
  controller.watch(backends, (eb) => [objectKey(eb)]);
  const ownerKey = (obj: KubeObject): string[] => {
    const owner = obj.metadata.labels?.[BACKEND_LABEL];
    return owner && obj.metadata.namespace ? [`${obj.metadata.namespace}/${owner}`] : [];
  };
  controller.watch(services, ownerKey);
  controller.watch(slices, ownerKey);
  controller.watch(endpoints, ownerKey);
  // A policy change re-evaluates the backends of every namespace it selected before or selects now
  // (the controller maps the old object too); a namespace's labels decide which policies apply.
  const backendsIn = (ns: string): string[] => backends.list().filter((eb) => eb.metadata.namespace === ns).map(objectKey);
  if (policiesServed) controller.watch(policies, (p) => namespaces.list().filter((n) => matchingPolicies([p], n.metadata.labels ?? {}).length).flatMap((n) => backendsIn(n.metadata.name)));
  controller.watch(namespaces, (n) => backendsIn(n.metadata.name));
  // A change in cluster networks can change which addresses are allowed: look at every backend again.
  const refreshPolicy = (): void => {
    factsChanged = false;
    const now = facts();
    const hash = shortHash(now);
    if (hash === policyHash) return;
    policyHash = hash;
    policy = buildAddressPolicy(now, o.allowClusterAddresses);
    for (const eb of backends.list()) controller.queue.add(objectKey(eb));
  };
  // Events that come together (a list of 5 000 Nodes is 5 000 adds) make one look at
  // every Node, not one each: that was 126 s of CPU at start-up at 5 000 Nodes.
  let factsChanged = false;
  const onFactsChange = (): void => {
    if (factsChanged) return;
    factsChanged = true;
    setImmediate(refreshPolicy);
  };
  // A Node's status is rewritten every few minutes with nothing the policy reads changed.
  nodes.on((event, node, old) => {
    if (event !== 'update' || !old || !sameNodeFacts(node, old)) onFactsChange();
  });
  for (const i of [apiSlices, ...(serviceCIDRs ? [serviceCIDRs] : [])]) i.on(onFactsChange);

  let ready = false;
  const idle = (): boolean => ready && controller.queue.length === 0 && controller.queue.active === 0;
  const healthServer = o.httpAddress
    ? await startHealthServer({
        address: o.httpAddress,
        metrics,
        checks: {
          '/healthz': () => undefined,
          '/livez': () => undefined,
          // Ready once caches are synced and we lead, or while we stand by for the lease.
          '/readyz': () => (ready || (o.leaderElect && !elector?.isLeader) ? undefined : 'caches not synced yet'),
        },
      })
    : undefined;

  const elector = o.leaderElect
    ? new LeaderElector({ client, namespace: o.leaseNamespace, name: o.leaseName, identity: o.identity ?? `${os.hostname()}_${process.pid}`, log })
    : undefined;

  // Losing the lease ends a term, not the process: the replica stops writing (its writes
  // in flight are cancelled), steps down and campaigns again. Exiting instead (what
  // controller-runtime does) leaves the restart to the kubelet, whose crash-loop backoff
  // (10 s, doubling to 5 min, reset only after 10 min of running) would delay every
  // recovery after the first outage; measured in test/integration/operator-faults.test.ts.
  const factInformers = [nodes, apiSlices, ...(serviceCIDRs ? [serviceCIDRs] : [])];
  let informersStarted = false;
  const done = (async (): Promise<'stopped'> => {
    while (!o.signal.aborted) {
      try {
        if (elector) await elector.acquire(o.signal);
      } catch {
        break;
      }
      const term = new AbortController();
      const endTerm = (): void => term.abort(new Error('this replica no longer leads'));
      o.signal.addEventListener('abort', endTerm, { once: true });
      deps = { ...baseDeps, client: elector ? client.withSignal(term.signal) : client };
      leader.set(1);
      if (!informersStarted) {
        for (const i of factInformers) i.start();
        await Promise.all(factInformers.map((i) => i.synced));
        refreshPolicy();
        informersStarted = true;
      }
      await controller.startWorkers(term.signal);
      ready = true;
      const outcome = elector ? await elector.holdUntil(term.signal, o.releaseLeaseOnStop ?? true) : await new Promise<'released'>((r) => term.signal.addEventListener('abort', () => r('released'), { once: true }));
      endTerm();
      o.signal.removeEventListener('abort', endTerm);
      ready = false;
      leader.set(0);
      await controller.stopWorkers();
      if (outcome === 'lost') log.warn('stepped down: writes stopped; campaigning for the lease again');
    }
    probes.stop();
    await controller.stop();
    await Promise.all(factInformers.map((i) => i.stop()));
    healthServer?.close();
    return 'stopped';
  })();

  return { metrics, idle, leading: () => !elector || elector.isLeader, done };
}
