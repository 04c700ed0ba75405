// The proxy model as an nftables table of our own per family (`ip extbackend`,
// `ip6 extbackend`). Service lookup goes through verdict maps (VIP . protocol . port
// -> goto the service's chain), so its cost does not grow with the number of
// Services; balancing is a numgen cascade (no anonymous sets); ClientIP affinity uses
// dynamic sets with timeouts. Every chain's first rule counts what enters it. Pure: the applier decides what to send to `nft -f`.
import { createHash } from 'node:crypto';
import { renderedOnce, type ModelEndpoint, type ProxyModel, type ServicePortModel } from '../model.ts';

export const TABLE = 'extbackend';
export const MASQ_MARK = '0x00010000';

export interface NftChain {
  name: string;
  /** For base chains: "type nat hook prerouting priority dstnat;" */
  base?: string;
  rules: string[];
  hash: string;
}

export interface NftSet {
  name: string;
  definition: string; // e.g. "type ipv4_addr; flags dynamic,timeout; timeout 60s;"
}

export interface NftState {
  family: 'ip' | 'ip6';
  chains: NftChain[];
  sets: NftSet[];
  /** Verdict-map name -> element text -> verdict ("goto svc-..."). */
  maps: Record<MapName, Map<string, string>>;
}

export const MAPS = {
  serviceIPs: 'service-ips',
  nodePorts: 'service-nodeports',
  noEndpointIPs: 'no-endpoint-services',
  noEndpointNodePorts: 'no-endpoint-nodeports',
} as const;
export type MapName = (typeof MAPS)[keyof typeof MAPS];

export function mapDefinitions(family: 'ip' | 'ip6'): Record<MapName, string> {
  const addr = family === 'ip' ? 'ipv4_addr' : 'ipv6_addr';
  return {
    'service-ips': `type ${addr} . inet_proto . inet_service : verdict;`,
    'service-nodeports': 'type inet_proto . inet_service : verdict;',
    'no-endpoint-services': `type ${addr} . inet_proto . inet_service : verdict;`,
    'no-endpoint-nodeports': 'type inet_proto . inet_service : verdict;',
  };
}

function hashed(prefix: string, ...parts: string[]): string {
  return `${prefix}${createHash('sha256').update(parts.join('|')).digest('hex').slice(0, 16)}`;
}

export const svcChain = (p: ServicePortModel): string => hashed('svc-', p.id);
export const extChain = (p: ServicePortModel): string => hashed('ext-', p.id);
export const sepChain = (p: ServicePortModel, e: ModelEndpoint): string => hashed('sep-', p.id, `${e.ip}:${e.port}`);
export const affinitySet = (p: ServicePortModel, e: ModelEndpoint): string => hashed('aff-', p.id, `${e.ip}:${e.port}`);

function chain(name: string, rules: string[], base?: string): NftChain {
  const hash = createHash('sha256').update(`${base ?? ''}\n${rules.join('\n')}`).digest('hex').slice(0, 16);
  return { name, rules, hash, ...(base ? { base } : {}) };
}

/**
 * Weighted random choice as a cascade of rules: rule i takes w_i of the weight R_i still
 * left (`numgen random mod R_i < w_i`), the last takes the rest. No anonymous maps: nft
 * loads every set in the ruleset on each call, and one map per Service made every
 * nft command on the node several times slower at 10 000 Services.
 */
function cascade(endpoints: ModelEndpoint[], action: (e: ModelEndpoint) => string): string[] {
  let remaining = endpoints.reduce((n, e) => n + e.weight, 0);
  return endpoints.map((e, i) => {
    const chance = i === endpoints.length - 1 ? '' : `numgen random mod ${remaining} < ${e.weight} `;
    remaining -= e.weight;
    return `${chance}${action(e)}`;
  });
}

/** What one service port contributes: its chains, affinity sets and map elements. */
interface PortOutput {
  chains: NftChain[];
  sets: NftSet[];
  elements: [MapName, string, string][];
}

function renderPort(p: ServicePortModel, family: 4 | 6): PortOutput {
  const nf = family === 4 ? 'ip' : 'ip6';
  const out: PortOutput = { chains: [], sets: [], elements: [] };
  const seps = new Set<string>();
  const addr = (e: ModelEndpoint): string => (family === 4 ? `${e.ip}:${e.port}` : `[${e.ip}]:${e.port}`);
  const ensureSep = (e: ModelEndpoint): void => {
    const name = sepChain(p, e);
    if (seps.has(name)) return;
    seps.add(name);
    const rules: string[] = [];
    if (p.affinitySeconds) {
      const set = affinitySet(p, e);
      out.sets.push({ name: set, definition: `type ${family === 4 ? 'ipv4_addr' : 'ipv6_addr'}; flags dynamic,timeout; timeout ${p.affinitySeconds}s;` });
      rules.push(`update @${set} { ${nf} saddr }`);
    }
    rules.push(`meta l4proto ${p.protocol} dnat to ${addr(e)}`);
    out.chains.push(chain(name, rules));
  };
  // Without affinity the service chain DNATs itself: no chain per endpoint.
  const lbRules = (endpoints: ModelEndpoint[], masquerade: boolean): string[] => [
    // Inline rather than a jump: every jump makes the kernel's table validation walk more.
    ...(masquerade ? [`meta mark set meta mark | ${MASQ_MARK}`] : []),
    ...(p.affinitySeconds
      ? [...endpoints.map((e) => `${nf} saddr @${affinitySet(p, e)} goto ${sepChain(p, e)}`), ...cascade(endpoints, (e) => `goto ${sepChain(p, e)}`)]
      : cascade(endpoints, (e) => `meta l4proto ${p.protocol} dnat to ${addr(e)}`)),
  ];
  const withSeps = (endpoints: ModelEndpoint[]): void => {
    if (p.affinitySeconds) endpoints.forEach(ensureSep);
  };
  const key = (ip: string, port: number): string => `${ip} . ${p.protocol} . ${port}`;
  if (p.clusterEndpoints.length) {
    out.chains.push(chain(svcChain(p), lbRules(p.clusterEndpoints, true)));
    withSeps(p.clusterEndpoints);
    for (const vip of p.clusterIPs) out.elements.push([MAPS.serviceIPs, key(vip, p.port), `goto ${svcChain(p)}`]);
  } else {
    for (const vip of p.clusterIPs) out.elements.push([MAPS.noEndpointIPs, key(vip, p.port), 'goto reject-chain']);
  }
  if (!p.externalIPs.length && p.nodePort === undefined) return out;
  if (p.externalEndpoints.length) {
    out.chains.push(chain(extChain(p), lbRules(p.externalEndpoints, !p.externalLocal)));
    withSeps(p.externalEndpoints);
    for (const ip of p.externalIPs) out.elements.push([MAPS.serviceIPs, key(ip, p.port), `goto ${extChain(p)}`]);
    if (p.nodePort) out.elements.push([MAPS.nodePorts, `${p.protocol} . ${p.nodePort}`, `goto ${extChain(p)}`]);
  } else {
    for (const ip of p.externalIPs) out.elements.push([MAPS.noEndpointIPs, key(ip, p.port), 'goto reject-chain']);
    if (p.nodePort) out.elements.push([MAPS.noEndpointNodePorts, `${p.protocol} . ${p.nodePort}`, 'goto reject-chain']);
  }
  return out;
}

// Ports are immutable and reused by the model cache between syncs, so their output is too.
const portCache = new WeakMap<ServicePortModel, PortOutput>();

export function renderNftables(model: ProxyModel, family: 4 | 6, options: { nodePortCIDRs: string[] }): NftState {
  const nf = family === 4 ? 'ip' : 'ip6';
  const maps: NftState['maps'] = { 'service-ips': new Map(), 'service-nodeports': new Map(), 'no-endpoint-services': new Map(), 'no-endpoint-nodeports': new Map() };
  const cidrs = options.nodePortCIDRs.filter((c) => c.includes(':') === (family === 6));
  const local = cidrs.length ? `${nf} daddr { ${cidrs.join(', ')} } fib daddr type local` : 'fib daddr type local';
  const chains: NftChain[] = [
    chain('nat-prerouting', ['jump services'], 'type nat hook prerouting priority dstnat;'),
    chain('nat-output', ['jump services'], 'type nat hook output priority -100;'),
    chain('nat-postrouting', ['jump masquerading'], 'type nat hook postrouting priority srcnat;'),
    chain('filter-input', ['ct state new jump external-filter'], 'type filter hook input priority filter;'),
    chain('filter-forward', ['ct state new jump services-filter', 'ct state new jump external-filter'], 'type filter hook forward priority filter;'),
    chain('filter-output', ['ct state new jump services-filter'], 'type filter hook output priority filter;'),
    chain('services', [`${nf} daddr . meta l4proto . th dport vmap @${MAPS.serviceIPs}`, `${local} meta l4proto . th dport vmap @${MAPS.nodePorts}`]),
    chain('services-filter', [`${nf} daddr . meta l4proto . th dport vmap @${MAPS.noEndpointIPs}`]),
    chain('external-filter', [`${local} meta l4proto . th dport vmap @${MAPS.noEndpointNodePorts}`]),
    chain('reject-chain', ['reject']),
    chain('masquerading', [`meta mark & ${MASQ_MARK} == 0 return`, `meta mark set meta mark ^ ${MASQ_MARK}`, 'masquerade fully-random']),
  ];
  const sets: NftSet[] = [];
  for (const p of model.ports) {
    if (p.family !== family) continue;
    const r = renderedOnce(portCache, p, (port) => renderPort(port, family));
    chains.push(...r.chains);
    sets.push(...r.sets);
    for (const [map, k, v] of r.elements) maps[map].set(k, v);
  }
  return { family: nf, chains, sets, maps };
}
