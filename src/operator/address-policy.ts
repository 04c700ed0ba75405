// Which outside addresses the operator will publish as endpoints. Endpoints are a
// cross-namespace forwarding risk (CVE-2021-25740): an ExternalBackend must not be a
// way to reach pods, other Services, the nodes or the API server behind their
// NetworkPolicies, unless the cluster admin allows it for the whole cluster.
//
// On top of that, cluster admins restrict namespaces with ExternalBackendPolicy objects
// (refuseByPolicy below): the same rules the ValidatingAdmissionPolicy in
// config/base/admission-policy.yaml applies at admission, re-applied here to DNS answers
// and to objects admitted before a policy or a namespace's labels changed.
import { cidrContains, forbiddenAddressReason, parseCidr, parseIP, type Cidr } from '../net/ip.ts';
import { targetPortFor, type BackendAddress, type ExternalBackendSpec } from '../api/external-backend.ts';
import type { ExternalBackendPolicy, LabelSelector, PortRange } from '../api/external-backend-policy.ts';

export interface BlockedRange {
  cidr: Cidr;
  /** e.g. "the cluster's service CIDR 10.96.0.0/16" */
  what: string;
}

export interface AddressPolicy {
  blocked: BlockedRange[];
  /** The cluster-wide switch (--allow-cluster-addresses) that lifts `blocked`. */
  allowClusterAddresses: boolean;
}

export interface ClusterNetworkFacts {
  serviceCIDRs: string[];
  podCIDRs: string[];
  nodeIPs: string[];
  apiServerIPs: string[];
}

export function buildAddressPolicy(facts: ClusterNetworkFacts, allowClusterAddresses: boolean): AddressPolicy {
  const ranges = (list: string[], what: (c: string) => string): BlockedRange[] =>
    list.flatMap((text) => {
      const cidr = parseCidr(text);
      return cidr ? [{ cidr, what: what(text) }] : [];
    });
  return {
    allowClusterAddresses,
    blocked: [
      ...ranges(facts.serviceCIDRs, (c) => `the cluster's service CIDR ${c}`),
      ...ranges(facts.podCIDRs, (c) => `the cluster's pod CIDR ${c}`),
      ...ranges(facts.nodeIPs, (c) => `node address ${c}`),
      ...ranges(facts.apiServerIPs, (c) => `API server address ${c}`),
    ],
  };
}

/** Undefined when the address may be published, else why not (plain words). */
export function refuseAddress(ip: string, policy: AddressPolicy): string | undefined {
  const always = forbiddenAddressReason(ip);
  if (always) return `${ip} is ${always}, which can never be an endpoint`;
  if (policy.allowClusterAddresses) return undefined;
  const parsed = parseIP(ip)!;
  const hit = policy.blocked.find((b) => cidrContains(b.cidr, parsed));
  return hit
    ? `${ip} is inside ${hit.what}; publishing it would bypass the cluster's own routing and policies (an operator started with --allow-cluster-addresses permits it)`
    : undefined;
}

/** The status reason (and Event reason) of what an ExternalBackendPolicy refused. */
export const POLICY_REASON = 'RefusedByPolicy';

/** A refusal by an ExternalBackendPolicy; `policy` is unset when no policy matched and one is required. */
export interface PolicyRefusal {
  policy?: string;
  message: string;
}

export interface PolicyOptions {
  /** --require-policy: a namespace no policy matches may use nothing. */
  requirePolicy: boolean;
}

/** What one address brings in: its IP (a spec IP or one DNS answer), its name, the ports on it. */
export interface PolicyAddress {
  ip?: string;
  hostname?: string;
  ports?: number[];
}

/** The API server's label selector semantics (NotIn also holds when the label is missing). */
export function selectorMatches(selector: LabelSelector, labels: Record<string, string>): boolean {
  const has = (key: string): boolean => Object.hasOwn(labels, key);
  return (
    Object.entries(selector.matchLabels ?? {}).every(([k, v]) => has(k) && labels[k] === v) &&
    (selector.matchExpressions ?? []).every((e) => {
      switch (e.operator) {
        case 'In':
          return has(e.key) && (e.values ?? []).includes(labels[e.key]!);
        case 'NotIn':
          return !(has(e.key) && (e.values ?? []).includes(labels[e.key]!));
        case 'Exists':
          return has(e.key);
        case 'DoesNotExist':
          return !has(e.key);
        default:
          return false; // an operator the schema does not know: match nothing rather than everything
      }
    })
  );
}

/** The policies that apply to a namespace with these labels, by name (so the first refusal reported is stable). */
export function matchingPolicies(policies: ExternalBackendPolicy[], namespaceLabels: Record<string, string>): ExternalBackendPolicy[] {
  return policies.filter((p) => selectorMatches(p.spec?.namespaceSelector ?? {}, namespaceLabels)).sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
}

/** Lower case, no trailing dot: how names are compared. */
export function normalizeHostname(name: string): string {
  return name.replace(/\.$/, '').toLowerCase();
}

/** Exact names, or "*.suffix" matching any name ending in ".suffix" (at any depth, not the suffix itself). */
export function hostnameAllowed(patterns: string[], hostname: string): boolean {
  const name = normalizeHostname(hostname);
  return patterns.some((p) => (p.startsWith('*.') ? name.endsWith(p.slice(1).toLowerCase()) : name === normalizeHostname(p)));
}

export function portAllowed(ranges: PortRange[], port: number): boolean {
  return ranges.some((r) => r.port <= port && port <= (r.endPort ?? r.port));
}

function describePorts(ranges: PortRange[]): string {
  return ranges.length ? ranges.map((r) => (r.endPort !== undefined && r.endPort !== r.port ? `${r.port}-${r.endPort}` : `${r.port}`)).join(', ') : 'none';
}

const listed = (items: string[]): string => (items.length ? items.join(', ') : 'none');

/** The CIDRs of a list that contain ip; invalid entries (the schema rejects them) never match. */
function containing(cidrs: string[], ip: string): string[] {
  const parsed = parseIP(ip);
  if (!parsed) return [];
  return cidrs.filter((c) => {
    const cidr = parseCidr(c);
    return !!cidr && cidrContains(cidr, parsed);
  });
}

function noPolicy(options: PolicyOptions, policies: ExternalBackendPolicy[]): PolicyRefusal | undefined {
  return options.requirePolicy && policies.length === 0
    ? { message: 'no ExternalBackendPolicy matches this namespace, and the operator requires one (--require-policy)' }
    : undefined;
}

/**
 * Undefined when every ExternalBackendPolicy matching the namespace allows the address,
 * else the first policy (by name) that refuses it and why. Deny wins over allow inside a
 * policy; across policies an address must pass each one, so adding a policy can only
 * take away. No matching policy allows everything, unless options.requirePolicy.
 */
export function refuseByPolicy(policies: ExternalBackendPolicy[], namespaceLabels: Record<string, string>, address: PolicyAddress, options: PolicyOptions): PolicyRefusal | undefined {
  const matching = matchingPolicies(policies, namespaceLabels);
  const none = noPolicy(options, matching);
  if (none) return none;
  for (const { metadata, spec } of matching) {
    const refuse = (why: string): PolicyRefusal => ({ policy: metadata.name, message: `ExternalBackendPolicy ${metadata.name} ${why}` });
    if (address.hostname !== undefined && spec.allowedHostnames && !hostnameAllowed(spec.allowedHostnames, address.hostname)) {
      return refuse(`does not allow hostname ${normalizeHostname(address.hostname)} (allowedHostnames: ${listed(spec.allowedHostnames)})`);
    }
    if (address.ip !== undefined) {
      const denied = containing(spec.deniedCIDRs ?? [], address.ip);
      if (denied.length) return refuse(`denies address ${address.ip} (inside deniedCIDRs ${denied.join(', ')})`);
      if (spec.allowedCIDRs && !containing(spec.allowedCIDRs, address.ip).length) {
        return refuse(`does not allow address ${address.ip} (allowedCIDRs: ${listed(spec.allowedCIDRs)})`);
      }
    }
    const port = spec.allowedPorts ? address.ports?.find((p) => !portAllowed(spec.allowedPorts!, p)) : undefined;
    if (port !== undefined) return refuse(`does not allow port ${port} (allowedPorts: ${describePorts(spec.allowedPorts!)})`);
  }
  return undefined;
}

/**
 * What refuses the ExternalBackend as a whole (its Service type, its health-check type,
 * or --require-policy with no matching policy): then nothing of it is published.
 */
export function refuseSpecByPolicy(policies: ExternalBackendPolicy[], namespaceLabels: Record<string, string>, spec: ExternalBackendSpec, options: PolicyOptions): PolicyRefusal | undefined {
  const matching = matchingPolicies(policies, namespaceLabels);
  const none = noPolicy(options, matching);
  if (none) return none;
  const serviceType = spec.service?.type ?? 'ClusterIP';
  const healthCheckType = spec.healthCheck?.type;
  for (const { metadata, spec: rules } of matching) {
    if (rules.allowedServiceTypes && !rules.allowedServiceTypes.includes(serviceType)) {
      return { policy: metadata.name, message: `ExternalBackendPolicy ${metadata.name} does not allow Services of type ${serviceType} (allowedServiceTypes: ${listed(rules.allowedServiceTypes)})` };
    }
    if (healthCheckType && rules.allowedHealthCheckTypes && !rules.allowedHealthCheckTypes.includes(healthCheckType)) {
      return { policy: metadata.name, message: `ExternalBackendPolicy ${metadata.name} does not allow ${healthCheckType} health checks (allowedHealthCheckTypes: ${listed(rules.allowedHealthCheckTypes)})` };
    }
  }
  return undefined;
}

/** The ports an address brings in on its host: each spec port's target there, and a numeric health-check port. */
export function outsidePorts(spec: ExternalBackendSpec, address: BackendAddress): number[] {
  const ports = spec.ports.map((p) => targetPortFor(address, p));
  const probe = spec.healthCheck?.port;
  if (typeof probe === 'number') ports.push(probe);
  return [...new Set(ports)];
}
