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
import { ProbeScheduler } from '../probes/scheduler.ts';
import { shortHash } from './desired.ts';
import { TlsSecrets } from './tls-secrets.ts';
import { reconcileExternalBackend } from './reconciler.ts';
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
  /** Resolves when the operator stopped; 'lost' when it lost the lease (the process should exit non-zero). */
  done: Promise<'stopped' | 'lost'>;
}

function collectionPath(group: string, version: string, plural: string, namespace?: string): string {
  return resourcePath({ group, version, plural, namespace });
}

interface NodeLike {
  metadata: KubeObject['metadata'];
  spec?: { podCIDR?: string; podCIDRs?: string[] };
  status?: { addresses?: { type: string; address: string }[] };
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
  const writes = metrics.counter('extbackend_api_writes_total', 'Requests that change something in the API, by verb and resource.');
  client.onWrite((verb, resource) => writes.inc({ verb, resource }));
  const leader = metrics.gauge('extbackend_leader', '1 when this replica is the leader.');

  const informer = <T extends { metadata: KubeObject['metadata'] }>(path: string, labelSelector?: string) =>
    new Informer<T>({ client, path, labelSelector, log: log.child({ informer: path }) });

  // Our objects carry the backend label, so the caches hold only what we own.
  const backends = informer<ExternalBackend>(collectionPath(GROUP, VERSION, PLURAL, o.namespace));
  const services = informer<KubeObject>(collectionPath('', 'v1', 'services', o.namespace), BACKEND_LABEL);
  const slices = informer<KubeObject>(collectionPath('discovery.k8s.io', 'v1', 'endpointslices', o.namespace), BACKEND_LABEL);
  const endpoints = informer<KubeObject>(collectionPath('', 'v1', 'endpoints', o.namespace), BACKEND_LABEL);

  // Facts for the address policy: nodes, service CIDRs, the API server's own endpoints.
  const nodes = informer<NodeLike>(collectionPath('', 'v1', 'nodes'));
  const apiSlices = informer<SliceLike>(collectionPath('discovery.k8s.io', 'v1', 'endpointslices', 'default'), `${SERVICE_NAME_LABEL}=kubernetes`);
  let serviceCIDRs: Informer<ServiceCIDRLike> | undefined = informer<ServiceCIDRLike>(collectionPath('networking.k8s.io', 'v1', 'servicecidrs'));
  try {
    await client.get(collectionPath('networking.k8s.io', 'v1', 'servicecidrs'), { limit: 1 });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    log.info('this cluster has no ServiceCIDR API; using --service-cidr only');
    serviceCIDRs = undefined;
  }
  // ExternalBackendPolicies (cluster-scoped) and the labels they select namespaces by.
  const policies = informer<ExternalBackendPolicy>(collectionPath(GROUP, VERSION, POLICY_PLURAL));
  let policiesServed = true;
  try {
    await client.get(collectionPath(GROUP, VERSION, POLICY_PLURAL), { limit: 1 });
  } catch (err) {
    if (!isNotFound(err)) throw err;
    // An informer on a missing resource would never sync, and the workers would never start.
    log.warn(`the ExternalBackendPolicy CRD is not installed; no policy applies${o.requirePolicy ? ', and --require-policy refuses every backend' : ''}`);
    policiesServed = false;
  }
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
  const probes = new ProbeScheduler({ onChange: (owner) => enqueue(owner), metrics, maxConcurrent: o.maxConcurrentProbes });
  const tlsSecrets = new TlsSecrets(client);
  const failoverMetrics = {
    activePriority: metrics.gauge('extbackend_active_priority', 'The priority group serving each backend port (-1: none).'),
    failovers: metrics.counter('extbackend_failovers_total', 'Changes of the serving priority group, by backend, port and direction (failover, failback).'),
  };
  const deps = { client, backends, services, slices, endpoints, resolver, policy: () => policy, tenancy, probes, tlsSecrets, events, log, failoverMetrics };
  const controller = new Controller({
    name: 'externalbackend',
    workers: o.workers,
    log,
    metrics,
    reconcile: (key) => reconcileExternalBackend(deps, key),
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
  const onFactsChange = (): void => {
    const now = facts();
    const hash = shortHash(now);
    if (hash === policyHash) return;
    policyHash = hash;
    policy = buildAddressPolicy(now, o.allowClusterAddresses);
    for (const eb of backends.list()) controller.queue.add(objectKey(eb));
  };
  for (const i of [nodes, apiSlices, ...(serviceCIDRs ? [serviceCIDRs] : [])]) i.on(onFactsChange);

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

  const done = (async (): Promise<'stopped' | 'lost'> => {
    try {
      if (elector) await elector.acquire(o.signal);
    } catch {
      healthServer?.close();
      return 'stopped';
    }
    leader.set(1);
    const factInformers = [nodes, apiSlices, ...(serviceCIDRs ? [serviceCIDRs] : [])];
    for (const i of factInformers) i.start();
    await Promise.all(factInformers.map((i) => i.synced));
    onFactsChange();
    await controller.start();
    ready = true;
    const holdAbort = new AbortController();
    o.signal.addEventListener('abort', () => holdAbort.abort(), { once: true });
    const outcome = elector ? await elector.holdUntil(holdAbort.signal, o.releaseLeaseOnStop ?? true) : await new Promise<'released'>((r) => o.signal.addEventListener('abort', () => r('released'), { once: true }));
    ready = false;
    leader.set(0);
    probes.stop();
    await controller.stop();
    await Promise.all(factInformers.map((i) => i.stop()));
    healthServer?.close();
    return outcome === 'lost' ? 'lost' : 'stopped';
  })();

  return { metrics, idle, done };
}
