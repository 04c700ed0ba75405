// The proxy model as nftables tables of our own per family. Service lookup goes through
// verdict maps (VIP . protocol . port -> goto the service's chain), so its cost does
// not grow with the number of Services. Services are spread over SHARDS tables
// (`extbackend-svcNN`, each with its own nat hooks and maps) because the kernel
// re-validates a whole table on every commit that touches a jump or NAT rule: a
// one-Service change re-validates 1/16 of the rules. The filter and masquerade hooks
// and the no-endpoint maps live in the main table `extbackend`. Service chains are
// named by their content hash, so the applier learns what is programmed from chain
// names alone. Balancing is a numgen cascade (no anonymous sets); ClientIP affinity
// uses dynamic sets with timeouts. Pure: the applier decides what to send to `nft -f`.
import { createHash } from 'node:crypto';
import { renderedOnce, type ModelEndpoint, type ProxyModel, type ServicePortModel } from '../model.ts';

export const TABLE = 'extbackend';
export const SHARDS = 16;
export const MASQ_MARK = '0x00010000';

export interface NftChain {
  name: string;
  /** For base chains: "type nat hook prerouting priority dstnat;" */
  base?: string;
  rules: string[];
  hash: string;
  /** The name ends with the content hash: a chain by this name always holds these rules. */
  versioned: boolean;
}

export interface NftSet {
  name: string;
  definition: string; // e.g. "type ipv4_addr; flags dynamic,timeout; timeout 60s;"
}

export interface NftMap {
  definition: string;
  /** Element text -> verdict ("goto svc-..."). */
  elements: Map<string, string>;
}

export interface NftTable {
  name: string;
  chains: NftChain[];
  sets: NftSet[];
  maps: Map<string, NftMap>;
}

export interface NftState {
  family: 'ip' | 'ip6';
  /** The main table first, then the shards that hold any Service. */
  tables: NftTable[];
}

export const MAPS = {
  serviceIPs: 'service-ips',
  nodePorts: 'service-nodeports',
  noEndpointIPs: 'no-endpoint-services',
  noEndpointNodePorts: 'no-endpoint-nodeports',
} as const;
type MapName = (typeof MAPS)[keyof typeof MAPS];

/** Our tables: the main one and the shards (also ones a different SHARDS left behind). */
export const isOurTable = (name: string): boolean => name === TABLE || /^extbackend-svc\d+$/.test(name);

const sha = (...parts: string[]): string => createHash('sha256').update(parts.join('|')).digest('hex');

export const shardTable = (p: Pick<ServicePortModel, 'id'>): string => `${TABLE}-svc${String(parseInt(sha(p.id).slice(0, 8), 16) % SHARDS).padStart(2, '0')}`;

/** What a service port's chain names start with (the content hash follows). */
export const chainPrefix = (kind: 'svc' | 'ext', p: Pick<ServicePortModel, 'id'>): string => `${kind}-${sha(p.id).slice(0, 12)}-`;
const sepPrefix = (p: ServicePortModel, e: ModelEndpoint): string => `sep-${sha(p.id, `${e.ip}:${e.port}`).slice(0, 12)}-`;
/** Stable while the endpoint and timeout stay, so clients keep their affinity across other changes. */
const affinitySet = (p: ServicePortModel, e: ModelEndpoint): string => `aff-${sha(p.id, `${e.ip}:${e.port}`, String(p.affinitySeconds)).slice(0, 16)}`;

function chain(name: string, rules: string[], base?: string): NftChain {
  return { name, rules, hash: sha(base ?? '', ...rules).slice(0, 16), versioned: false, ...(base ? { base } : {}) };
}

function versionedChain(prefix: string, rules: string[]): NftChain {
  const hash = sha(...rules).slice(0, 12);
  return { name: `${prefix}${hash}`, rules, hash, versioned: true };
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

/** What one service port contributes: chains, affinity sets (in its shard) and map elements. */
interface PortOutput {
  shard: string;
  chains: NftChain[];
  sets: NftSet[];
  elements: [MapName, string, string][];
}

function renderPort(p: ServicePortModel, family: 4 | 6): PortOutput {
  const nf = family === 4 ? 'ip' : 'ip6';
  const out: PortOutput = { shard: shardTable(p), chains: [], sets: [], elements: [] };
  const seps = new Map<string, string>();
  const addr = (e: ModelEndpoint): string => (family === 4 ? `${e.ip}:${e.port}` : `[${e.ip}]:${e.port}`);
  /** With affinity, each endpoint has a chain that records the client, then DNATs. */
  const sep = (e: ModelEndpoint): string => {
    const key = `${e.ip}:${e.port}`;
    const known = seps.get(key);
    if (known) return known;
    const set = affinitySet(p, e);
    out.sets.push({ name: set, definition: `type ${family === 4 ? 'ipv4_addr' : 'ipv6_addr'}; flags dynamic,timeout; timeout ${p.affinitySeconds}s;` });
    const c = versionedChain(sepPrefix(p, e), [`update @${set} { ${nf} saddr }`, `meta l4proto ${p.protocol} dnat to ${addr(e)}`]);
    out.chains.push(c);
    seps.set(key, c.name);
    return c.name;
  };
  // Without affinity the service chain DNATs itself: no chain per endpoint.
  const lbRules = (endpoints: ModelEndpoint[], masquerade: boolean): string[] => [
    // Inline rather than a jump: every jump makes the kernel's table validation walk more.
    ...(masquerade ? [`meta mark set meta mark | ${MASQ_MARK}`] : []),
    ...(p.affinitySeconds
      ? [...endpoints.map((e) => `${nf} saddr @${affinitySet(p, e)} goto ${sep(e)}`), ...cascade(endpoints, (e) => `goto ${sep(e)}`)]
      : cascade(endpoints, (e) => `meta l4proto ${p.protocol} dnat to ${addr(e)}`)),
  ];
  const key = (ip: string, port: number): string => `${ip} . ${p.protocol} . ${port}`;
  if (p.clusterEndpoints.length) {
    const svc = versionedChain(chainPrefix('svc', p), lbRules(p.clusterEndpoints, true));
    out.chains.push(svc);
    for (const vip of p.clusterIPs) out.elements.push([MAPS.serviceIPs, key(vip, p.port), `goto ${svc.name}`]);
  } else {
    for (const vip of p.clusterIPs) out.elements.push([MAPS.noEndpointIPs, key(vip, p.port), 'goto reject-chain']);
  }
  if (!p.externalIPs.length && p.nodePort === undefined) return out;
  if (p.externalEndpoints.length) {
    const ext = versionedChain(chainPrefix('ext', p), lbRules(p.externalEndpoints, !p.externalLocal));
    out.chains.push(ext);
    for (const ip of p.externalIPs) out.elements.push([MAPS.serviceIPs, key(ip, p.port), `goto ${ext.name}`]);
    if (p.nodePort) out.elements.push([MAPS.nodePorts, `${p.protocol} . ${p.nodePort}`, `goto ${ext.name}`]);
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
  const addr = family === 4 ? 'ipv4_addr' : 'ipv6_addr';
  const byAddress = `type ${addr} . inet_proto . inet_service : verdict;`;
  const byPort = 'type inet_proto . inet_service : verdict;';
  const cidrs = options.nodePortCIDRs.filter((c) => c.includes(':') === (family === 6));
  /** A table's two verdict maps: by address . protocol . port, and by protocol . port (node ports). */
  const emptyMaps = (byAddressMap: MapName, byPortMap: MapName): Map<string, NftMap> =>
    new Map([
      [byAddressMap, { definition: byAddress, elements: new Map() }],
      [byPortMap, { definition: byPort, elements: new Map() }],
    ]);
  const local = cidrs.length ? `${nf} daddr { ${cidrs.join(', ')} } fib daddr type local` : 'fib daddr type local';
  const main: NftTable = {
    name: TABLE,
    sets: [],
    maps: emptyMaps(MAPS.noEndpointIPs, MAPS.noEndpointNodePorts),
    chains: [
      chain('nat-postrouting', ['jump masquerading'], 'type nat hook postrouting priority srcnat;'),
      chain('filter-input', ['ct state new jump external-filter'], 'type filter hook input priority filter;'),
      chain('filter-forward', ['ct state new jump services-filter', 'ct state new jump external-filter'], 'type filter hook forward priority filter;'),
      chain('filter-output', ['ct state new jump services-filter'], 'type filter hook output priority filter;'),
      chain('services-filter', [`${nf} daddr . meta l4proto . th dport vmap @${MAPS.noEndpointIPs}`]),
      chain('external-filter', [`${local} meta l4proto . th dport vmap @${MAPS.noEndpointNodePorts}`]),
      // TCP gets a reset: ICMP errors are rate-limited (ICMPv6 to about one a second).
      chain('reject-chain', ['meta l4proto tcp reject with tcp reset', 'reject']),
      chain('masquerading', [`meta mark & ${MASQ_MARK} == 0 return`, `meta mark set meta mark ^ ${MASQ_MARK}`, 'masquerade fully-random']),
    ],
  };
  const shards = new Map<string, NftTable>();
  const shard = (name: string): NftTable => {
    let s = shards.get(name);
    if (!s) {
      s = {
        name,
        sets: [],
        maps: emptyMaps(MAPS.serviceIPs, MAPS.nodePorts),
        chains: [
          chain('nat-prerouting', ['jump services'], 'type nat hook prerouting priority dstnat;'),
          chain('nat-output', ['jump services'], 'type nat hook output priority -100;'),
          chain('services', [`${nf} daddr . meta l4proto . th dport vmap @${MAPS.serviceIPs}`, `${local} meta l4proto . th dport vmap @${MAPS.nodePorts}`]),
        ],
      };
      shards.set(name, s);
    }
    return s;
  };
  for (const p of model.ports) {
    if (p.family !== family) continue;
    const r = renderedOnce(portCache, p, (port) => renderPort(port, family));
    for (const [map, k, v] of r.elements) {
      const table = map === MAPS.serviceIPs || map === MAPS.nodePorts ? shard(r.shard) : main;
      table.maps.get(map)!.elements.set(k, v);
    }
    if (!r.chains.length) continue;
    const s = shard(r.shard);
    s.chains.push(...r.chains);
    s.sets.push(...r.sets);
  }
  return { family: nf, tables: [main, ...[...shards.values()].sort((a, b) => a.name.localeCompare(b.name))] };
}
