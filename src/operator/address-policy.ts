// Which outside addresses the operator will publish as endpoints. Endpoints are a
// cross-namespace forwarding risk (CVE-2021-25740): an ExternalBackend must not be a
// way to reach pods, other Services, the nodes or the API server behind their
// NetworkPolicies, unless the cluster admin allows it for the whole cluster.
import { cidrContains, forbiddenAddressReason, parseCidr, parseIP, type Cidr } from '../net/ip.ts';

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
