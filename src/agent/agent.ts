// `extbackend agent`: trackers (informers for our labelled Services, all
// EndpointSlices, this Node) -> proxy model -> rendered rules -> applier, driven by a
// bounded-frequency runner. Nothing is programmed before all three caches synced;
// while the API server is away the last rules stay as they are.
import { execFile } from 'node:child_process';
import http from 'node:http';
import { promisify } from 'node:util';
import type { Logger } from '../log.ts';
import { cidrContains, parseCidr, parseIP } from '../net/ip.ts';
import { systemCommand } from '../net/system-command.ts';
import { PROXY_NAME, PROXY_NAME_LABEL } from '../api/labels.ts';
import { startHealthServer } from '../runtime/http-server.ts';
import { Informer } from '../runtime/informer.ts';
import { resourcePath, type KubeClient } from '../runtime/kube-client.ts';
import { Registry } from '../runtime/metrics.ts';
import { IptablesApplier } from './iptables/apply.ts';
import { IpvsApplier, nodeAddresses, prepareIpvsNode, removeDummyInterface } from './ipvs/apply.ts';
import type { Scheduler } from './ipvs/plan.ts';
import { renderIptables } from './iptables/render.ts';
import { NftablesApplier } from './nftables/apply.ts';
import { SliceIndex } from './slice-index.ts';
import { staleUdpEndpoints } from './stale-udp.ts';
import { renderNftables } from './nftables/render.ts';
import { buildProxyModel, ModelCache, type NodeInput, type ProxyModel, type ServiceInput, type SliceInput } from './model.ts';
import { proxyHealth, SyncRunner } from './sync-runner.ts';

const run = promisify(execFile);

export type ProxyMode = 'iptables' | 'nftables' | 'ipvs';

export interface AgentOptions {
  client: KubeClient;
  log: Logger;
  nodeName: string;
  mode: ProxyMode;
  nodePortCIDRs: string[];
  externalIPCIDRs: string[];
  /** IPVS scheduler (ipvs mode only). */
  ipvsScheduler?: Scheduler;
  syncPeriodMs: number;
  minSyncPeriodMs: number;
  httpAddress?: string;
  signal: AbortSignal;
}

interface NodeObject {
  metadata: { name: string; labels?: Record<string, string> };
  status?: { addresses?: { type: string; address: string }[] };
}

type Obj = ServiceInput & { metadata: ServiceInput['metadata'] & { resourceVersion?: string } };
type SliceObj = SliceInput & { metadata: SliceInput['metadata'] & { resourceVersion?: string } };

export interface RunningAgent {
  metrics: Registry;
  /** Resolves after the first successful sync. */
  firstSync: Promise<void>;
  done: Promise<void>;
}

/** Deletes the conntrack entries of UDP flows to endpoints that left (stale-udp.ts says which). */
async function clearStaleUdp(before: ProxyModel, after: ProxyModel, log: Logger): Promise<void> {
  for (const { ip, family } of staleUdpEndpoints(before, after)) {
    await run(systemCommand('conntrack'), ['-D', '-p', 'udp', '--dst-nat', ip, ...(family === 6 ? ['-f', 'ipv6'] : [])]).catch((err: Error & { code?: number | string }) => {
      // Exit code 1 means "no entries": nothing to delete.
      if (err.code !== 1) log.warn('conntrack cleanup failed', { endpoint: ip, error: err.message });
    });
  }
}

export async function startAgent(o: AgentOptions): Promise<RunningAgent> {
  const { client, log } = o;
  const metrics = new Registry();
  const syncs = metrics.histogram('extbackend_agent_sync_duration_seconds', 'Time one sync of the rules took, full or partial.', ['kind']);
  const syncErrors = metrics.counter('extbackend_agent_sync_errors_total', 'Syncs that failed (retried with backoff, then fully).');
  const chainsWritten = metrics.counter('extbackend_agent_chains_written_total', 'Chains (re)written by syncs.', ['family']);
  const ruleCount = metrics.gauge('extbackend_agent_rules', 'Rules (and, for nftables, map elements) we own, by family.', ['family']);
  const programming = metrics.histogram('extbackend_network_programming_duration_seconds', 'From a slice change (last-change-trigger-time) to rules in the kernel.', [], [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30]);
  const driftRepairs = metrics.counter('extbackend_agent_drift_repairs_total', 'Chains and maps of ours that a full sync found changed behind our back, and rewrote.', ['family']);
  const healthCheckListenErrors = metrics.counter('extbackend_agent_health_check_listen_errors_total', 'healthCheckNodePort servers that could not listen (retried on the next sync).');
  const servicePorts = metrics.gauge('extbackend_agent_service_ports', 'Service ports programmed on this node.');
  // kube-proxy's kubeproxy_sync_proxy_rules_last_timestamp_seconds: "sync stale" alerts on its age.
  const lastSync = metrics.gauge('extbackend_agent_sync_last_timestamp_seconds', 'When the last successful sync finished (Unix seconds).');

  const services = new Informer<Obj>({ client, path: resourcePath({ group: '', version: 'v1', plural: 'services' }), labelSelector: `${PROXY_NAME_LABEL}=${PROXY_NAME}`, log });
  // Only slices labelled for us, as kube-proxy watches only slices without the label: a pod
  // restart elsewhere in the cluster is no watch event on any node of ours.
  const slices = new Informer<SliceObj>({ client, path: resourcePath({ group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices' }), labelSelector: `${PROXY_NAME_LABEL}=${PROXY_NAME}`, log });
  const nodes = new Informer<NodeObject>({ client, path: resourcePath({ group: '', version: 'v1', plural: 'nodes' }), fieldSelector: `metadata.name=${o.nodeName}`, log });
  const externalCidrs = o.externalIPCIDRs.map((c) => parseCidr(c)).filter((c) => c !== undefined);
  const plane = dataPlane(o, log);
  let lastModel: ProxyModel = { ports: [] };
  const modelCache = new ModelCache();
  // A sync looks up each of our Services' slices by its name.
  const sliceIndex = new SliceIndex();
  slices.on((event, slice, old) => sliceIndex.update(event, slice, old));
  let pendingTriggers: number[] = [];
  const hcServers = new Map<number, http.Server>();

  const nodeInput = (): NodeInput => {
    const node = nodes.list()[0];
    return { name: o.nodeName, labels: node?.metadata.labels ?? {}, nodePortAddresses: (node?.status?.addresses ?? []).map((a) => a.address) };
  };

  const sync = async (full: boolean): Promise<void> => {
    const started = performance.now();
    const model = buildProxyModel(services.list(), (namespace, name) => sliceIndex.slicesOf(namespace, name), nodeInput(), {
      externalIPAllowed: (ip) => externalCidrs.some((c) => cidrContains(c, parseIP(ip)!)),
    }, modelCache);
    // Where a sync's time went, for the log: model, then each family's render + apply.
    const phases: Record<string, number> = { modelMs: Math.round(performance.now() - started) };
    let written = 0;
    let elements = 0;
    let drifted = 0;
    const names: string[] = [];
    const syncFamily = async (family: 4 | 6): Promise<void> => {
      const before = performance.now();
      const result = await plane.sync(model, family, full);
      phases[`ipv${family}Ms`] = Math.round(performance.now() - before);
      written += result.written;
      elements += result.elements ?? 0;
      drifted += result.drifted ?? 0;
      if (result.drifted) driftRepairs.inc({ family: String(family) }, result.drifted);
      names.push(...(result.names ?? []));
      chainsWritten.inc({ family: String(family) }, result.written);
      ruleCount.set({ family: String(family) }, result.rules);
    };
    if (plane.familiesAtOnce) await Promise.all([syncFamily(4), syncFamily(6)]);
    else for (const family of [4, 6] as const) await syncFamily(family);
    await clearStaleUdp(lastModel, model, log);
    lastModel = model;
    servicePorts.set(model.ports.length);
    await syncHealthCheckServers(model);
    const seconds = (performance.now() - started) / 1000;
    syncs.observe({ kind: full ? 'full' : 'partial' }, seconds);
    lastSync.set(Date.now() / 1000);
    const now = Date.now();
    for (const t of pendingTriggers) programming.observe((now - t) / 1000);
    pendingTriggers = [];
    // nftables Services are mostly map elements: a change may write elements and no chain.
    const fields = { full, ports: model.ports.length, chainsWritten: written, ...(elements ? { elementsChanged: elements } : {}), ms: Math.round(seconds * 1000), ...phases, chains: names.slice(0, 6).join(' ') };
    if (drifted) log.warn('repaired rules changed behind our back', { drifted, ...fields });
    else if (written || elements) log.info('synced', fields);
    else log.debug('synced', fields);
  };

  /** kube-proxy's healthCheckNodePort contract: 200 with local endpoints, 503 without. */
  const syncHealthCheckServers = async (model: ProxyModel): Promise<void> => {
    const wanted = new Map<number, { namespace: string; name: string; local: number }>();
    // One responder per Service: a dual-stack Service has a port model per family, and local endpoints of either count.
    for (const p of model.ports) {
      if (!p.healthCheckNodePort) continue;
      const seen = wanted.get(p.healthCheckNodePort);
      wanted.set(p.healthCheckNodePort, { namespace: p.namespace, name: p.service, local: (seen?.local ?? 0) + p.localEndpoints });
    }
    for (const [port, server] of hcServers) {
      if (!wanted.has(port)) {
        server.close();
        hcServers.delete(port);
      }
    }
    for (const [port, info] of wanted) {
      const existing = hcServers.get(port);
      const handler: http.RequestListener = (_req, res) => {
        const current = wanted.get(port) ?? info;
        res.writeHead(current.local > 0 ? 200 : 503, { 'content-type': 'application/json', 'x-content-type-options': 'nosniff' });
        res.end(JSON.stringify({ service: { namespace: current.namespace, name: current.name }, localEndpoints: current.local, serviceProxyHealthy: true }));
      };
      if (existing) {
        existing.removeAllListeners('request');
        existing.on('request', handler);
        continue;
      }
      const server = http.createServer(handler);
      const listenError = await new Promise<Error | undefined>((resolve) => {
        server.once('error', resolve);
        server.listen(port, () => resolve(undefined));
      });
      if (listenError) {
        // Not kept: the next sync tries again (the port may be free by then).
        server.close();
        healthCheckListenErrors.inc();
        log.warn('cannot listen on healthCheckNodePort; retrying on the next sync', { port, service: `${info.namespace}/${info.name}`, error: listenError.message });
        continue;
      }
      hcServers.set(port, server);
    }
  };

  let firstSyncDone!: () => void;
  const firstSync = new Promise<void>((r) => (firstSyncDone = r));
  const runner = new SyncRunner({
    minIntervalMs: o.minSyncPeriodMs,
    maxIntervalMs: o.syncPeriodMs,
    sync: async (full) => {
      await sync(full);
      firstSyncDone();
    },
    onError: (err, retryInMs) => {
      syncErrors.inc();
      log.error('sync failed; retrying with a full sync', { error: err.message, retryInMs });
    },
  });
  const onChange = (): void => runner.request();
  services.on(onChange);
  nodes.on(onChange);
  slices.on((_e, slice) => {
    const trigger = slice.metadata.annotations?.['endpoints.kubernetes.io/last-change-trigger-time'];
    if (trigger) pendingTriggers.push(Date.parse(trigger));
    onChange();
  });

  let synced = false;
  const healthServer = o.httpAddress
    ? await startHealthServer({
        address: o.httpAddress,
        metrics,
        checks: {
          // kube-proxy's contract: /healthz fails once a queued change has waited more than two sync periods.
          '/healthz': () => (synced ? proxyHealth(runner, Date.now(), 2 * o.syncPeriodMs) : 'not synced yet'),
          '/readyz': () => (synced && runner.lastSuccess ? undefined : 'not synced yet'),
          '/livez': () => (runner.lastSuccess === undefined ? undefined : proxyHealth(runner, Date.now(), 2 * o.syncPeriodMs)),
        },
      })
    : undefined;

  for (const i of [services, slices, nodes]) i.start();
  const done = (async (): Promise<void> => {
    await Promise.race([Promise.all([services.synced, slices.synced, nodes.synced]), new Promise((r) => o.signal.addEventListener('abort', r, { once: true }))]);
    if (!o.signal.aborted) {
      if (!nodes.list().length) log.warn('this node has no Node object; topology keys other than kubernetes.io/hostname will not match', { node: o.nodeName });
      synced = true;
      log.info('caches synced; programming the node', { node: o.nodeName, mode: o.mode });
      runner.start();
      // Only once this mode's rules carry the traffic do the other modes' go, so switching modes drops nothing.
      await Promise.race([firstSync, new Promise((r) => o.signal.addEventListener('abort', r, { once: true }))]);
      if (!o.signal.aborted) await removeOtherModes(o.mode, log);
      await new Promise((r) => o.signal.addEventListener('abort', r, { once: true }));
    }
    // The rules stay: a restarting agent must not break connections (use --cleanup to remove them).
    runner.stop();
    for (const s of hcServers.values()) s.close();
    healthServer?.close();
    await Promise.all([services.stop(), slices.stop(), nodes.stop()]);
  })();
  return { metrics, firstSync, done };
}

interface DataPlane {
  /** The families' syncs are independent (their own tables and processes): run them at once. */
  familiesAtOnce?: boolean;
  /** Programs one family; returns chains written and the rules (and map elements) now owned. */
  sync(model: ProxyModel, family: 4 | 6, full: boolean): Promise<{ written: number; rules: number; names?: string[]; elements?: number; drifted?: number }>;
}

function dataPlane(o: AgentOptions, log: Logger): DataPlane {
  const { mode, nodePortCIDRs } = o;
  if (mode === 'ipvs') {
    const appliers = { 4: new IpvsApplier(4), 6: new IpvsApplier(6) } as const;
    const cidrs = nodePortCIDRs.map((c) => parseCidr(c)).filter((c) => c !== undefined);
    let addresses: string[] | undefined;
    const reported = new Set<string>();
    return {
      sync: async (model, family, full) => {
        // Node addresses are re-read on full syncs (they rarely change; NodePorts follow within a sync period).
        if (family === 4 && (full || !addresses)) {
          await prepareIpvsNode();
          addresses = await nodeAddresses((ip) => !cidrs.length || cidrs.some((c) => cidrContains(c, parseIP(ip)!)));
        }
        const r = await appliers[family].apply(model, full, { scheduler: o.ipvsScheduler ?? 'rr', nodeAddresses: addresses! });
        for (const key of r.conflicts.filter((k) => !reported.has(k))) {
          reported.add(key);
          log.warn('an IPVS virtual server we need exists and is not ours; leaving it alone', { virtualServer: key });
        }
        return { written: r.written, rules: r.virtualServers + r.realServers };
      },
    };
  }
  if (mode === 'nftables') {
    const appliers = { 4: new NftablesApplier('ip'), 6: new NftablesApplier('ip6') } as const;
    return {
      familiesAtOnce: true,
      sync: async (model, family, full) => {
        const state = renderNftables(model, family, { nodePortCIDRs });
        const r = await appliers[family].apply(state, full);
        let rules = 0;
        for (const table of state.tables) {
          for (const c of table.chains) rules += c.rules.length;
          for (const m of table.maps.values()) for (const g of m.groups) rules += g.length;
        }
        return { written: r.written, names: r.names, rules, elements: r.elements, drifted: r.drifted };
      },
    };
  }
  const appliers = { 4: new IptablesApplier(4), 6: new IptablesApplier(6) } as const;
  return {
    sync: async (model, family, full) => {
      const chains = renderIptables(model, family, { nodePortCIDRs });
      const r = await appliers[family].apply(chains, full);
      return { written: r.written, rules: chains.reduce((n, c) => n + c.rules.length, 0), drifted: r.drifted };
    },
  };
}

type CleanupStep = [what: string, step: () => Promise<number | boolean>];

/** Every step of ours a mode leaves on a node, for one mode or all. */
function cleanupSteps(modes: ProxyMode[]): CleanupStep[] {
  const steps: CleanupStep[] = [];
  for (const family of [4, 6] as const) {
    if (modes.includes('iptables')) steps.push([`IPv${family} iptables hooks and chains`, () => new IptablesApplier(family).cleanup()]);
    if (modes.includes('nftables')) steps.push([`IPv${family} nftables tables`, () => new NftablesApplier(family === 4 ? 'ip' : 'ip6').cleanup()]);
    if (modes.includes('ipvs')) steps.push([`IPv${family} IPVS virtual servers`, () => new IpvsApplier(family).cleanup()]);
  }
  if (modes.includes('ipvs')) steps.push(['IPVS dummy interface', () => removeDummyInterface()]);
  return steps;
}

/** Runs every step, each on its own: one failing does not stop the others. */
async function runCleanupSteps(steps: CleanupStep[]): Promise<{ removed: Record<string, number>; failures: string[] }> {
  const removed: Record<string, number> = {};
  const failures: string[] = [];
  for (const [what, step] of steps) {
    try {
      const n = Number(await step());
      if (n) removed[what] = n;
    } catch (err) {
      failures.push(`${what}: ${(err as Error).message}`);
    }
  }
  return { removed, failures };
}

/**
 * Removes what the agent made in the other proxy modes (a DaemonSet switched from
 * iptables to nftables, say), as kube-proxy does at start; never anything not ours.
 * In IPVS mode iptables mode's chains need no step: IPVS mode's own iptables chains
 * replace them as stale chains of ours.
 */
export async function removeOtherModes(mode: ProxyMode, log: Logger): Promise<void> {
  const others: ProxyMode[] = mode === 'nftables' ? ['iptables', 'ipvs'] : mode === 'iptables' ? ['nftables', 'ipvs'] : ['nftables'];
  const { removed, failures } = await runCleanupSteps(cleanupSteps(others));
  if (Object.keys(removed).length) log.info('removed other proxy modes\' leftovers', { mode, removed });
  for (const failure of failures) log.warn('could not remove another proxy mode\'s leftovers', { error: failure });
}

/**
 * `extbackend agent --cleanup`: removes every hook, chain, table and rule the agent
 * created, in any mode. Throws, after trying every step, when any of them failed (not
 * root, say), so the command exits non-zero instead of reporting a clean node.
 */
export async function cleanupAgent(log: Logger): Promise<void> {
  const { removed, failures } = await runCleanupSteps(cleanupSteps(['iptables', 'nftables', 'ipvs']));
  log.info(Object.keys(removed).length ? 'removed what the agent made' : 'nothing of the agent\'s was left', { removed });
  if (failures.length) throw new Error(`cleanup incomplete (it needs root with NET_ADMIN in the node's network namespace): ${failures.join('; ')}`);
}
