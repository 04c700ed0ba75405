// What one node should do for the Services it proxies, as a pure function of the
// Services, their EndpointSlices and the node: per Service port, the frontends
// (cluster IPs, node ports, load-balancer and allowed external IPs) and the endpoints
// chosen for cluster traffic and for external traffic. Renderers turn this into
// iptables, nftables or IPVS; nothing here knows about any of them.
import net from 'node:net';
import { ENDPOINT_TOPOLOGY_ANNOTATION, SERVICE_NAME_LABEL, TOPOLOGY_KEYS_ANNOTATION } from '../api/labels.ts';

export type Family = 4 | 6;
export type L4 = 'tcp' | 'udp' | 'sctp';

export interface ServiceInput {
  metadata: { name: string; namespace?: string; annotations?: Record<string, string>; labels?: Record<string, string> };
  spec?: {
    type?: string;
    clusterIP?: string;
    clusterIPs?: string[];
    ports?: { name?: string; port: number; protocol?: string; nodePort?: number }[];
    externalIPs?: string[];
    externalTrafficPolicy?: string;
    internalTrafficPolicy?: string;
    sessionAffinity?: string;
    sessionAffinityConfig?: { clientIP?: { timeoutSeconds?: number } };
    healthCheckNodePort?: number;
  };
  status?: { loadBalancer?: { ingress?: { ip?: string }[] } };
}

export interface SliceInput {
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  addressType?: string;
  ports?: { name?: string; port?: number; protocol?: string }[];
  endpoints?: { addresses: string[]; conditions?: { ready?: boolean; serving?: boolean; terminating?: boolean }; nodeName?: string; zone?: string }[];
}

export interface NodeInput {
  name: string;
  labels: Record<string, string>;
  /** Addresses NodePorts answer on (after --nodeport-addresses filtering). */
  nodePortAddresses: string[];
}

export interface ModelOptions {
  /** externalIPs are ignored unless inside one of these CIDRs (kube-proxy honours all; we are stricter). */
  externalIPAllowed: (ip: string) => boolean;
}

export interface ModelEndpoint {
  ip: string;
  port: number;
  weight: number;
  nodeName?: string;
}

export interface ServicePortModel {
  /** "namespace/name:port/protocol", unique per node. */
  id: string;
  namespace: string;
  service: string;
  portName: string;
  protocol: L4;
  family: Family;
  port: number;
  clusterIPs: string[];
  nodePort?: number;
  /** Load-balancer ingress IPs and allowed external IPs. */
  externalIPs: string[];
  /** Seconds of ClientIP affinity, when enabled. */
  affinitySeconds?: number;
  /** Endpoints for traffic from inside the cluster (topologyKeys and internalTrafficPolicy applied). */
  clusterEndpoints: ModelEndpoint[];
  /** Endpoints for traffic from outside (NodePort, LB, external IPs). */
  externalEndpoints: ModelEndpoint[];
  /** externalTrafficPolicy Local: external traffic keeps its source IP (no SNAT). */
  externalLocal: boolean;
  healthCheckNodePort?: number;
  /** Local endpoints, for the health-check responder. */
  localEndpoints: number;
  /** "ip:port" of serving endpoints that are terminating: IPVS drains these (weight 0) instead of cutting them off. */
  terminatingEndpoints: string[];
}

export interface ProxyModel {
  ports: ServicePortModel[];
}

interface Candidate extends ModelEndpoint {
  ready: boolean;
  serving: boolean;
  terminating: boolean;
  topology: Record<string, string>;
}

const PROTOCOLS: Record<string, L4> = { TCP: 'tcp', UDP: 'udp', SCTP: 'sctp' };

/** Endpoint topology by label key: hostname and zone from the slice, the rest from our annotation. */
function endpointTopology(e: NonNullable<SliceInput['endpoints']>[number], extra: { region?: string; topology?: Record<string, string> } | undefined): Record<string, string> {
  return {
    ...(extra?.topology ?? {}),
    ...(extra?.region ? { 'topology.kubernetes.io/region': extra.region } : {}),
    ...(e.zone ? { 'topology.kubernetes.io/zone': e.zone } : {}),
    ...(e.nodeName ? { 'kubernetes.io/hostname': e.nodeName } : {}),
  };
}

function parseTopologyAnnotation(slice: SliceInput): Record<string, { region?: string; topology?: Record<string, string>; weight?: number }> {
  const raw = slice.metadata.annotations?.[ENDPOINT_TOPOLOGY_ANNOTATION];
  if (!raw) return {};
  try {
    return JSON.parse(raw) as Record<string, { region?: string; topology?: Record<string, string>; weight?: number }>;
  } catch {
    return {};
  }
}

/** ready, else serving and terminating, else nothing (the Service then rejects). */
export function usableEndpoints<T extends { ready: boolean; serving: boolean; terminating: boolean }>(all: T[]): T[] {
  const ready = all.filter((e) => e.ready);
  if (ready.length) return ready;
  return all.filter((e) => e.serving && e.terminating);
}

/**
 * topologyKeys as the removed Service field defined them: the first key for which some
 * endpoint's value equals this node's value wins; "*" matches every endpoint; when no
 * key matches, nothing does (the Service rejects on this node).
 */
export function applyTopologyKeys<T extends { topology: Record<string, string> }>(endpoints: T[], keys: string[], node: NodeInput): T[] {
  if (!keys.length) return endpoints;
  for (const key of keys) {
    if (key === '*') return endpoints;
    const mine = key === 'kubernetes.io/hostname' ? node.name : node.labels[key];
    if (mine === undefined) continue;
    const matching = endpoints.filter((e) => e.topology[key] === mine);
    if (matching.length) return matching;
  }
  return [];
}

function candidatesFor(slices: SliceInput[], family: Family, portName: string, protocol: L4): Candidate[] {
  const out = new Map<string, Candidate>();
  for (const slice of slices) {
    if (slice.addressType !== (family === 4 ? 'IPv4' : 'IPv6')) continue;
    const port = slice.ports?.find((p) => (p.name ?? '') === portName && PROTOCOLS[p.protocol ?? 'TCP'] === protocol);
    if (!port?.port) continue;
    const extras = parseTopologyAnnotation(slice);
    for (const e of slice.endpoints ?? []) {
      const ip = e.addresses[0];
      if (!ip || net.isIP(ip) !== family) continue;
      const key = `${ip}:${port.port}`;
      if (out.has(key)) continue; // the same endpoint in two slices (e.g. during a move) counts once
      const c = e.conditions ?? {};
      out.set(key, {
        ip,
        port: port.port,
        weight: extras[ip]?.weight ?? 1,
        ...(e.nodeName ? { nodeName: e.nodeName } : {}),
        ready: c.ready ?? true,
        serving: c.serving ?? c.ready ?? true,
        terminating: c.terminating ?? false,
        topology: endpointTopology(e, extras[ip]),
      });
    }
  }
  return [...out.values()].sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.port - b.port));
}

const strip = (c: Candidate): ModelEndpoint => ({ ip: c.ip, port: c.port, weight: c.weight, ...(c.nodeName ? { nodeName: c.nodeName } : {}) });

interface CacheEntry {
  namespace: string;
  name: string;
  svc: ServiceInput;
  slices: SliceInput[];
  key: string | undefined;
  ports: ServicePortModel[];
  /** The last build that saw this Service. */
  generation: number;
}

/** Memo of per-Service results across syncs: valid while the node's name and labels stay. */
export class ModelCache {
  nodeKey = '';
  generation = 0;
  /** By "namespace/name", for sorting and forgetting. */
  readonly services = new Map<string, CacheEntry>();
  /** The same entries by namespace, then name: found with the objects' own strings, no key built per sync. */
  readonly byName = new Map<string, Map<string, CacheEntry>>();
  /** Service ids in port order; undefined when Services came or went since it was sorted. */
  sortedIds: string[] | undefined;
}

/** Port ids start with the Service id and ':': ordering Services by `id:` orders their ports the same. */
const byPortOrder = (a: string, b: string): number => {
  const x = `${a}:`;
  const y = `${b}:`;
  return x < y ? -1 : x > y ? 1 : 0;
};
const byId = (a: { id: string }, b: { id: string }): number => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);

const rvOf = (o: { metadata: unknown }): string | undefined => (o.metadata as { resourceVersion?: string }).resourceVersion;

function serviceCacheKey(svc: ServiceInput, slices: SliceInput[]): string | undefined {
  const rv = rvOf(svc);
  const sliceRvs = slices.map(rvOf);
  if (!rv || sliceRvs.some((r) => !r)) return undefined;
  return `${rv}|${sliceRvs.sort().join(',')}`;
}

/** Informer caches hand out the same objects while nothing changed: the cheap check first. */
function unchanged(e: CacheEntry, svc: ServiceInput, slices: SliceInput[]): boolean {
  if (e.svc === svc && e.slices.length === slices.length && e.slices.every((s, i) => s === slices[i])) return true;
  const key = serviceCacheKey(svc, slices);
  return key !== undefined && key === e.key;
}

/** A Service's EndpointSlices, by its namespace and name (the agent keeps them indexed). */
export type SlicesOf = (namespace: string, name: string) => SliceInput[];

/**
 * Slices by namespace, then Service name: the objects' own strings as keys (a
 * "namespace/name" built per object and sync would be hashed anew each time).
 */
function groupByService(slices: SliceInput[]): SlicesOf {
  const byService = new Map<string, Map<string, SliceInput[]>>();
  for (const s of slices) {
    const svc = s.metadata.labels?.[SERVICE_NAME_LABEL];
    if (!svc) continue;
    const namespace = s.metadata.namespace ?? 'default';
    let byName = byService.get(namespace);
    if (!byName) byService.set(namespace, (byName = new Map<string, SliceInput[]>()));
    const list = byName.get(svc);
    if (list) list.push(s);
    else byName.set(svc, [s]);
  }
  return (namespace, name) => byService.get(namespace)?.get(name) ?? [];
}

/**
 * The model for every Service. With a cache, a Service whose object, slices and node
 * are unchanged since the last call reuses its previous ports (the same objects, so
 * renderers can reuse their output too): a one-Service change costs one Service's work.
 */
export function buildProxyModel(services: ServiceInput[], slices: SliceInput[] | SlicesOf, node: NodeInput, options: ModelOptions, cache?: ModelCache): ProxyModel {
  const slicesOf = typeof slices === 'function' ? slices : groupByService(slices);
  if (cache) {
    const nodeKey = JSON.stringify([node.name, node.labels]);
    if (cache.nodeKey !== nodeKey) {
      cache.services.clear();
      cache.byName.clear();
      cache.sortedIds = undefined;
    }
    cache.nodeKey = nodeKey;
  }
  const ports: ServicePortModel[] = [];
  const generation = cache ? ++cache.generation : 0;
  for (const svc of services) {
    const namespace = svc.metadata.namespace ?? 'default';
    const name = svc.metadata.name;
    const svcSlices = slicesOf(namespace, name);
    const hit = cache?.byName.get(namespace)?.get(name);
    if (hit && unchanged(hit, svc, svcSlices)) {
      hit.svc = svc;
      hit.slices = svcSlices;
      hit.generation = generation;
      continue;
    }
    const result = servicePorts(svc, svcSlices, node, options).sort(byId);
    if (!cache) {
      for (const p of result) ports.push(p);
      continue;
    }
    if (!hit) cache.sortedIds = undefined;
    const entry: CacheEntry = { namespace, name, svc, slices: svcSlices, key: serviceCacheKey(svc, svcSlices), ports: result, generation };
    cache.services.set(`${namespace}/${name}`, entry);
    let byName = cache.byName.get(namespace);
    if (!byName) cache.byName.set(namespace, (byName = new Map<string, CacheEntry>()));
    byName.set(name, entry);
  }
  if (!cache) return { ports: ports.sort(byId) };
  // Forget Services that are gone (only when there are some: ids are unique).
  if (cache.services.size > services.length) {
    for (const [id, e] of cache.services) {
      if (e.generation === generation) continue;
      cache.services.delete(id);
      cache.byName.get(e.namespace)?.delete(e.name);
    }
    cache.sortedIds = undefined;
  }
  // Sorting 10 000 ids costs more than the rest of a one-Service rebuild: only when Services came or went.
  cache.sortedIds ??= [...cache.services.keys()].sort(byPortOrder);
  for (const id of cache.sortedIds) for (const p of cache.services.get(id)!.ports) ports.push(p);
  return { ports };
}

function servicePorts(svc: ServiceInput, svcSlices: SliceInput[], node: NodeInput, options: ModelOptions): ServicePortModel[] {
  const ports: ServicePortModel[] = [];
  const spec = svc.spec ?? {};
  const clusterIPs = (spec.clusterIPs ?? (spec.clusterIP ? [spec.clusterIP] : [])).filter((ip) => net.isIP(ip));
  if (!clusterIPs.length) return ports; // headless or not allocated yet: nothing to proxy
  const ns = svc.metadata.namespace ?? 'default';
  const keys = (svc.metadata.annotations?.[TOPOLOGY_KEYS_ANNOTATION] ?? '').split(',').map((k) => k.trim()).filter(Boolean);
  const external = spec.type === 'NodePort' || spec.type === 'LoadBalancer';
  const externalLocal = external && spec.externalTrafficPolicy === 'Local';
  const internalLocal = spec.internalTrafficPolicy === 'Local';
  const affinitySeconds = spec.sessionAffinity === 'ClientIP' ? (spec.sessionAffinityConfig?.clientIP?.timeoutSeconds ?? 10800) : undefined;
  const lbIPs = (svc.status?.loadBalancer?.ingress ?? []).map((i) => i.ip).filter((ip): ip is string => !!ip && !!net.isIP(ip));
  const extIPs = (spec.externalIPs ?? []).filter((ip) => net.isIP(ip) && options.externalIPAllowed(ip));
  for (const family of [4, 6] as const) {
    const vips = clusterIPs.filter((ip) => net.isIP(ip) === family);
    if (!vips.length) continue;
    for (const p of spec.ports ?? []) {
      const protocol = PROTOCOLS[p.protocol ?? 'TCP'];
      if (!protocol) continue;
      const portName = p.name ?? '';
      const candidates = candidatesFor(svcSlices, family, portName, protocol);
      const usable = usableEndpoints(candidates);
      const local = usable.filter((e) => e.nodeName === node.name);
      const clusterEndpoints = internalLocal ? local : applyTopologyKeys(usable, keys, node);
      ports.push({
        id: `${ns}/${svc.metadata.name}:${portName || p.port}/${protocol}${family === 6 ? '/v6' : ''}`,
        namespace: ns,
        service: svc.metadata.name,
        portName,
        protocol,
        family,
        port: p.port,
        clusterIPs: vips,
        ...(external && p.nodePort ? { nodePort: p.nodePort } : {}),
        externalIPs: [...lbIPs, ...extIPs].filter((ip) => net.isIP(ip) === family),
        ...(affinitySeconds ? { affinitySeconds } : {}),
        clusterEndpoints: clusterEndpoints.map(strip),
        externalEndpoints: (externalLocal ? local : applyTopologyKeys(usable, keys, node)).map(strip),
        externalLocal,
        ...(externalLocal && spec.healthCheckNodePort ? { healthCheckNodePort: spec.healthCheckNodePort } : {}),
        localEndpoints: local.length,
        terminatingEndpoints: candidates.filter((e) => e.serving && e.terminating).map((e) => `${e.ip}:${e.port}`),
      });
    }
  }
  return ports;
}

/** Renders a port once: ports are immutable and the model cache reuses them between syncs. */
export function renderedOnce<T>(cache: WeakMap<ServicePortModel, T>, port: ServicePortModel, render: (p: ServicePortModel) => T): T {
  let r = cache.get(port);
  if (r === undefined) {
    r = render(port);
    cache.set(port, r);
  }
  return r;
}
