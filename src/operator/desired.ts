// What the cluster should hold for one ExternalBackend, as a pure function of its spec,
// the resolved addresses and their health: the Service, the EndpointSlices and the
// optional v1 Endpoints. No I/O here; the reconciler compares and applies.
import { createHash } from 'node:crypto';
import { parseIP } from '../net/ip.ts';
import { API_VERSION, KIND, portName, targetPortFor, type BackendAddress, type BackendPort, type ExternalBackend } from '../api/external-backend.ts';
import { decideFailover, roleOf, type PortDecision, type Role } from './failover.ts';
import {
  APPLIED_HASH_ANNOTATION,
  APP_MANAGED_BY_LABEL,
  BACKEND_LABEL,
  ENDPOINT_TOPOLOGY_ANNOTATION,
  FIELD_MANAGER,
  MANAGED_BY,
  MANAGED_BY_LABEL,
  PROXY_NAME,
  PROXY_NAME_LABEL,
  SERVICE_NAME_LABEL,
  SKIP_MIRROR_LABEL,
  TOPOLOGY_KEYS_ANNOTATION,
} from '../api/labels.ts';
import { semanticProblems } from '../api/validation.ts';
import type { KubeObject, OwnerReference } from '../runtime/kube-object.ts';

export const DEFAULT_AFFINITY_TIMEOUT = 10800;
export const DEFAULT_MAX_PER_SLICE = 100;
/** v1 Endpoints holds at most this many addresses; more are truncated, as the API documents. */
export const ENDPOINTS_CAPACITY = 1000;

/** One spec address after DNS resolution and the address policy. */
export interface ResolvedAddress {
  spec: BackendAddress;
  /** The spec's ip or hostname. */
  key: string;
  /** Canonical IPs that may be published. */
  ips: string[];
  /** Set when nothing of this address can be published (DNS failure, every IP refused). */
  problem?: { reason: string; message: string };
  /** IPs the policy refused, with why (a hostname may resolve to good and bad IPs). */
  refused?: { ip: string; message: string; /** the ExternalBackendPolicy that refused it */ policy?: string }[];
}

/** Health of one IP on one port; every endpoint is healthy when no check is configured. */
export type HealthLookup = (ip: string, port: BackendPort) => boolean;
export const ALWAYS_HEALTHY: HealthLookup = () => true;

export interface SlicePort {
  name: string;
  port: number;
  protocol: string;
  appProtocol?: string;
}

export interface DesiredEndpoint {
  ip: string;
  /** Healthy by probe: published as serving. */
  healthy: boolean;
  /** Published as ready (in the active group, or publishNotReadyAddresses). */
  ready: boolean;
  /** Drained: published as terminating, a last resort for proxies. */
  terminating: boolean;
  address: BackendAddress;
}

export interface DesiredState {
  service: KubeObject;
  slices: KubeObject[];
  endpoints?: KubeObject;
  /** Per spec port name: does any endpoint serve it ready? */
  portsWithReadyEndpoints: Map<string, boolean>;
  /** Semantic problems the schema cannot see; any makes Accepted False. */
  problems: string[];
  /** The active priority group and every endpoint's role, per port key (failover.ts: portKey). */
  failover: Map<string, PortDecision>;
}

export function isHeadless(eb: ExternalBackend): boolean {
  return eb.spec.service?.type === 'Headless';
}

export function ownerReference(eb: ExternalBackend): OwnerReference {
  return { apiVersion: API_VERSION, kind: KIND, name: eb.metadata.name, uid: eb.metadata.uid!, controller: true, blockOwnerDeletion: true };
}

/** JSON with sorted keys: the same object always hashes the same. */
export function stableJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) : v,
  );
}

export function shortHash(value: unknown, length = 10): string {
  return createHash('sha256').update(stableJson(value)).digest('hex').slice(0, length);
}

/** Stamps an object with the hash of what we apply, so a later removal of a field is seen as a change. */
function withAppliedHash(obj: KubeObject): KubeObject {
  const hash = shortHash(obj, 16);
  obj.metadata.annotations = { ...obj.metadata.annotations, [APPLIED_HASH_ANNOTATION]: hash };
  return obj;
}

function baseLabels(eb: ExternalBackend): Record<string, string> {
  return { [APP_MANAGED_BY_LABEL]: FIELD_MANAGER, [BACKEND_LABEL]: eb.metadata.name };
}

/**
 * The agent's label, on the Service and on its slices: agents watch only slices that carry
 * it (as kube-proxy watches only slices without it), so no node holds the cluster's other slices.
 */
function proxyLabel(eb: ExternalBackend): Record<string, string> {
  const svc = eb.spec.service ?? {};
  return (svc.proxy ?? 'agent') === 'agent' && !isHeadless(eb) ? { [PROXY_NAME_LABEL]: PROXY_NAME } : {};
}

export function desiredService(eb: ExternalBackend): KubeObject {
  const svc = eb.spec.service ?? {};
  const type = svc.type ?? 'ClusterIP';
  const labels = { ...baseLabels(eb), ...proxyLabel(eb) };
  const annotations: Record<string, string> = {};
  if (svc.topologyKeys?.length) annotations[TOPOLOGY_KEYS_ANNOTATION] = svc.topologyKeys.join(',');
  const external = type === 'NodePort' || type === 'LoadBalancer';
  const spec: Record<string, unknown> = {
    type: type === 'Headless' ? 'ClusterIP' : type,
    ports: eb.spec.ports.map((p) => ({
      ...(p.name ? { name: p.name } : {}),
      port: p.port,
      targetPort: p.targetPort ?? p.port,
      protocol: p.protocol ?? 'TCP',
      ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}),
      ...(external && p.nodePort ? { nodePort: p.nodePort } : {}),
    })),
  };
  // Hosts may be IPv4 or IPv6: a dual-stack cluster gives the Service both families
  // (each family's hosts are reached through its own cluster IP); a single-stack one, its one.
  spec.ipFamilyPolicy = 'PreferDualStack';
  if (type === 'Headless') spec.clusterIP = 'None';
  else if (svc.clusterIP) spec.clusterIP = svc.clusterIP;
  if (external && svc.externalTrafficPolicy) spec.externalTrafficPolicy = svc.externalTrafficPolicy;
  if (type !== 'Headless' && svc.internalTrafficPolicy) spec.internalTrafficPolicy = svc.internalTrafficPolicy;
  if (type === 'LoadBalancer' && svc.healthCheckNodePort) spec.healthCheckNodePort = svc.healthCheckNodePort;
  if (svc.publishNotReadyAddresses) spec.publishNotReadyAddresses = true;
  spec.sessionAffinity = svc.sessionAffinity ?? 'None';
  if (svc.sessionAffinity === 'ClientIP') {
    spec.sessionAffinityConfig = { clientIP: { timeoutSeconds: svc.sessionAffinityTimeoutSeconds ?? DEFAULT_AFFINITY_TIMEOUT } };
  }
  return withAppliedHash({
    apiVersion: 'v1',
    kind: 'Service',
    metadata: { name: eb.metadata.name, namespace: eb.metadata.namespace, labels, annotations, ownerReferences: [ownerReference(eb)] },
    spec,
  });
}

/**
 * Endpoints grouped by the exact port list they serve: an EndpointSlice (and a v1
 * Endpoints subset) has one port list, so hosts with other target ports, and a host
 * whose ports differ in health, land in different groups.
 */
interface EndpointGroup {
  family: 4 | 6;
  ports: SlicePort[];
  endpoints: DesiredEndpoint[];
}

function groupEndpoints(eb: ExternalBackend, resolved: ResolvedAddress[], health: HealthLookup, role: (ip: string, port: BackendPort) => Role): EndpointGroup[] {
  const publishNotReady = eb.spec.service?.publishNotReadyAddresses === true;
  const groups = new Map<string, EndpointGroup>();
  const seen = new Set<string>();
  for (const addr of resolved) {
    for (const ip of addr.ips) {
      if (seen.has(ip)) continue; // the same IP listed twice (or resolved twice) is one endpoint
      seen.add(ip);
      const family = parseIP(ip)!.family;
      // Ports where this IP's conditions differ (health, or the active group) go to different slices.
      const byConditions = new Map<string, { endpoint: DesiredEndpoint; ports: SlicePort[] }>();
      for (const p of eb.spec.ports) {
        const healthy = health(ip, p);
        const endpoint = { ip, healthy, ready: role(ip, p) === 'active' || publishNotReady, terminating: addr.spec.drain === true, address: addr.spec };
        const conditions = `${endpoint.ready}|${endpoint.healthy}|${endpoint.terminating}`;
        const entry = byConditions.get(conditions) ?? { endpoint, ports: [] };
        entry.ports.push({ name: portName(p), port: targetPortFor(addr.spec, p), protocol: p.protocol ?? 'TCP', ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}) });
        byConditions.set(conditions, entry);
      }
      for (const { endpoint, ports } of byConditions.values()) {
        const key = `${family}|${stableJson(ports)}`;
        const group = groups.get(key) ?? { family, ports, endpoints: [] };
        group.endpoints.push(endpoint);
        groups.set(key, group);
      }
    }
  }
  const sorted = [...groups.values()].sort((a, b) => a.family - b.family || stableJson(a.ports).localeCompare(stableJson(b.ports)));
  for (const g of sorted) g.endpoints.sort((a, b) => compareIPs(a.ip, b.ip));
  return sorted;
}

function compareIPs(a: string, b: string): number {
  const x = parseIP(a)!.value;
  const y = parseIP(b)!.value;
  return x < y ? -1 : x > y ? 1 : 0;
}

/** Region, free-form topology and weight: what the EndpointSlice API cannot carry. */
function endpointTopology(endpoints: DesiredEndpoint[]): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const e of endpoints) {
    const { region, topology, weight } = e.address;
    const entry: Record<string, unknown> = {};
    if (region) entry.region = region;
    if (topology && Object.keys(topology).length) entry.topology = topology;
    if (weight !== undefined && weight !== 1) entry.weight = weight;
    if (Object.keys(entry).length) out[e.ip] = entry;
  }
  return Object.keys(out).length ? out : undefined;
}

function desiredSlices(eb: ExternalBackend, groups: EndpointGroup[]): KubeObject[] {
  const max = eb.spec.endpoints?.maxEndpointsPerSlice ?? DEFAULT_MAX_PER_SLICE;
  const slices: KubeObject[] = [];
  for (const g of groups) {
    const portsHash = shortHash(g.ports, 8);
    for (let i = 0; i * max < g.endpoints.length; i++) {
      const chunk = g.endpoints.slice(i * max, (i + 1) * max);
      const topology = endpointTopology(chunk);
      slices.push(
        withAppliedHash({
          apiVersion: 'discovery.k8s.io/v1',
          kind: 'EndpointSlice',
          metadata: {
            name: `${eb.metadata.name}-ipv${g.family}-${portsHash}-${i}`,
            namespace: eb.metadata.namespace,
            labels: { ...baseLabels(eb), ...proxyLabel(eb), [SERVICE_NAME_LABEL]: eb.metadata.name, [MANAGED_BY_LABEL]: MANAGED_BY },
            annotations: topology ? { [ENDPOINT_TOPOLOGY_ANNOTATION]: stableJson(topology) } : {},
            ownerReferences: [ownerReference(eb)],
          },
          addressType: g.family === 4 ? 'IPv4' : 'IPv6',
          ports: g.ports,
          endpoints: chunk.map((e) => ({
            addresses: [e.ip],
            conditions: { ready: e.ready, serving: e.healthy, terminating: e.terminating },
            ...(e.address.nodeName ? { nodeName: e.address.nodeName } : {}),
            ...(e.address.zone ? { zone: e.address.zone } : {}),
          })),
        }),
      );
    }
  }
  return slices;
}

function desiredEndpoints(eb: ExternalBackend, groups: EndpointGroup[]): KubeObject {
  let room = ENDPOINTS_CAPACITY;
  const subsets = new Map<string, { addresses: object[]; notReadyAddresses: object[]; ports: SlicePort[] }>();
  for (const g of groups) {
    const key = stableJson(g.ports);
    const subset = subsets.get(key) ?? { addresses: [], notReadyAddresses: [], ports: g.ports };
    for (const e of g.endpoints) {
      if (room === 0) break;
      room--;
      const address = { ip: e.ip, ...(e.address.nodeName ? { nodeName: e.address.nodeName } : {}) };
      (e.ready ? subset.addresses : subset.notReadyAddresses).push(address);
    }
    subsets.set(key, subset);
  }
  const labels: Record<string, string> = { ...baseLabels(eb), [SKIP_MIRROR_LABEL]: 'true' };
  const annotations: Record<string, string> = {};
  if (room === 0 && groups.reduce((n, g) => n + g.endpoints.length, 0) > ENDPOINTS_CAPACITY) {
    annotations['endpoints.kubernetes.io/over-capacity'] = 'truncated';
  }
  return withAppliedHash({
    apiVersion: 'v1',
    kind: 'Endpoints',
    metadata: { name: eb.metadata.name, namespace: eb.metadata.namespace, labels, annotations, ownerReferences: [ownerReference(eb)] },
    subsets: [...subsets.values()]
      .filter((s) => s.addresses.length || s.notReadyAddresses.length)
      .map((s) => ({
        ...(s.addresses.length ? { addresses: s.addresses } : {}),
        ...(s.notReadyAddresses.length ? { notReadyAddresses: s.notReadyAddresses } : {}),
        ports: s.ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), port: p.port, protocol: p.protocol, ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}) })),
      })),
  });
}

/**
 * `failover` is the group decision for this moment (failover.ts: decideFailover, with
 * the clock and probe times); without it, one is made from the spec and status alone.
 */
export function desiredState(eb: ExternalBackend, resolved: ResolvedAddress[], health: HealthLookup = ALWAYS_HEALTHY, failover?: Map<string, PortDecision>): DesiredState {
  const decisions = failover ?? decideFailover({ eb, resolved, health, nowMs: 0 });
  const groups = groupEndpoints(eb, resolved, health, (ip, port) => roleOf(decisions, ip, port));
  const portsWithReadyEndpoints = new Map<string, boolean>(eb.spec.ports.map((p) => [portName(p), false]));
  for (const g of groups) {
    if (g.endpoints.some((e) => e.healthy)) for (const p of g.ports) portsWithReadyEndpoints.set(p.name, true);
  }
  const legacy = eb.spec.endpoints?.legacyEndpoints ?? true;
  return {
    service: desiredService(eb),
    slices: desiredSlices(eb, groups),
    ...(legacy ? { endpoints: desiredEndpoints(eb, groups) } : {}),
    portsWithReadyEndpoints,
    problems: semanticProblems(eb),
    failover: decisions,
  };
}
