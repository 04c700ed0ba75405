// The proxy model as nftables tables of our own per family. Service lookup goes through
// verdict maps (VIP . protocol . port -> goto a chain), so its cost does not grow with
// the number of Services. Services are spread over SHARDS tables (`extbackend-svcNN`,
// each with its own nat hooks and maps) because the kernel re-validates a whole table
// on every commit that touches a jump or NAT rule. The filter and masquerade hooks and
// the no-endpoint maps live in the main table `extbackend`.
//
// Balancing is by endpoint slots: a Service with endpoint weights summing to W (after
// dividing by their gcd) owns W elements `VIP . port . slot -> endpoint` in the shard's
// slot map for its protocol, and its verdict element jumps to a chain shared by every
// Service with the same W (`dnat to ip daddr . tcp dport . numgen random mod W map
// @service-endpoints-tcp`). So a Service is map elements, not rules: `nft -f` loads an element several times faster than
// a rule, and a one-Service change touches no chain at all. Services with ClientIP
// affinity (dynamic sets with timeouts, a chain per endpoint) or too many slots get a
// chain of their own with a numgen cascade. Chains are named by their content hash, so
// the applier learns what is programmed from chain names alone. Pure: the applier
// decides what to send to `nft -f`.
import { createHash } from 'node:crypto';
import { renderedOnce, type ModelEndpoint, type ProxyModel, type ServicePortModel } from '../model.ts';

export const TABLE = 'extbackend';
export const SHARDS = 16;
export const MASQ_MARK = '0x00010000';
/** Marks a connection for masquerade (inline rather than a jump: every jump makes the kernel's table validation walk more). */
const MARK_MASQ = `meta mark set meta mark | ${MASQ_MARK}`;

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

/** Element key text and value: a verdict ("goto svc-...") or an endpoint ("198.18.0.1 . 8080"). */
export type NftElement = readonly [key: string, value: string];

/**
 * One service port's elements of one map. Groups of unchanged ports are the same array
 * object from sync to sync (the port's rendering is cached), so the applier diffs a map
 * by group identity: a one-Service change costs one group, not 100 000 elements.
 */
export type ElementGroup = readonly NftElement[];

export interface NftMap {
  definition: string;
  groups: ElementGroup[];
}

/** A map's elements as one lookup table (a key in two groups: the first wins, as the applier does). */
export function mapElements(map: NftMap): Map<string, string> {
  const out = new Map<string, string>();
  for (const g of map.groups) for (const [k, v] of g) if (!out.has(k)) out.set(k, v);
  return out;
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
/** The main table's maps; all others are in the shards. */
const MAIN_MAPS: ReadonlySet<string> = new Set([MAPS.noEndpointIPs, MAPS.noEndpointNodePorts]);
/** A Service whose weights need more slots than this gets a cascade chain instead. */
export const MAX_SLOTS = 128;
type MapName = (typeof MAPS)[keyof typeof MAPS];

/**
 * A shard's slot map for a protocol: `address . port . slot` (or `node port . slot`) ->
 * endpoint `address . port`. One per protocol, because nft 1.0.6 cannot use a map read
 * back from the kernel whose typeof says `th dport` ("conflicting protocols").
 */
export function slotMap(family: 4 | 6, protocol: string, byNodePort: boolean): { name: string; key: string; definition: string } {
  const nf = family === 4 ? 'ip' : 'ip6';
  const key = byNodePort ? `${protocol} dport` : `${nf} daddr . ${protocol} dport`;
  return { name: `${byNodePort ? 'nodeport' : 'service'}-endpoints-${protocol}`, key, definition: `typeof ${key} . numgen random mod 2 : ${nf} daddr . ${protocol} dport;` };
}

/** Slot map name -> definition, per family. */
const slotMapDefinitions = (family: 4 | 6): Map<string, string> =>
  new Map(['tcp', 'udp', 'sctp'].flatMap((proto) => [false, true].map((byNodePort) => slotMap(family, proto, byNodePort))).map((m) => [m.name, m.definition]));
const SLOT_MAP_DEFINITIONS = { 4: slotMapDefinitions(4), 6: slotMapDefinitions(6) };

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
 * left (`numgen random mod R_i < w_i`), the last takes the rest. No anonymous maps: the
 * kernel looks set names up in a list, and one map per Service made a 10 000-Service
 * load several times slower.
 */
function cascade(endpoints: ModelEndpoint[], action: (e: ModelEndpoint) => string): string[] {
  let remaining = endpoints.reduce((n, e) => n + e.weight, 0);
  return endpoints.map((e, i) => {
    const chance = i === endpoints.length - 1 ? '' : `numgen random mod ${remaining} < ${e.weight} `;
    remaining -= e.weight;
    return `${chance}${action(e)}`;
  });
}

const gcd = (a: number, b: number): number => (b ? gcd(b, a % b) : a);

/** Endpoint i gets weight_i / gcd consecutive slots; undefined when that needs more than MAX_SLOTS. */
function slots(endpoints: ModelEndpoint[]): ModelEndpoint[] | undefined {
  if (endpoints.some((e) => !Number.isInteger(e.weight) || e.weight < 1)) return undefined;
  const g = endpoints.reduce((n, e) => gcd(n, e.weight), 0);
  const total = endpoints.reduce((n, e) => n + e.weight / g, 0);
  if (total > MAX_SLOTS) return undefined;
  return endpoints.flatMap((e) => Array<ModelEndpoint>(e.weight / g).fill(e));
}

/** What one service port contributes: chains, affinity sets (in its shard) and map elements. */
interface PortOutput {
  shard: string;
  chains: NftChain[];
  /** Slot chains: shared by the Services of a shard with the same slot count, protocol and masquerade. */
  shared: NftChain[];
  sets: NftSet[];
  /** Map name -> this port's elements of it. */
  elements: Map<string, NftElement[]>;
}

function renderPort(p: ServicePortModel, family: 4 | 6): PortOutput {
  const nf = family === 4 ? 'ip' : 'ip6';
  const out: PortOutput = { shard: shardTable(p), chains: [], shared: [], sets: [], elements: new Map() };
  const element = (map: string, k: string, v: string): void => {
    let group = out.elements.get(map);
    if (!group) out.elements.set(map, (group = []));
    group.push([k, v]);
  };
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
    ...(masquerade ? [MARK_MASQ] : []),
    ...(p.affinitySeconds
      ? [...endpoints.map((e) => `${nf} saddr @${affinitySet(p, e)} goto ${sep(e)}`), ...cascade(endpoints, (e) => `goto ${sep(e)}`)]
      : cascade(endpoints, (e) => `meta l4proto ${p.protocol} dnat to ${addr(e)}`)),
  ];
  const key = (ip: string, port: number): string => `${ip} . ${p.protocol} . ${port}`;
  /**
   * The verdict that balances `endpoints` for traffic to `addresses` (this port's VIPs or
   * external IPs; none: its node port): a goto to a shared slot chain, with this port's
   * slot elements, or to a chain of its own.
   */
  const balance = (kind: 'svc' | 'ext', endpoints: ModelEndpoint[], masquerade: boolean, addresses?: string[]): string => {
    const slotted = p.affinitySeconds ? undefined : slots(endpoints);
    if (!slotted) {
      const c = versionedChain(chainPrefix(kind, p), lbRules(endpoints, masquerade));
      // External IPs and the node port share the port's one external chain.
      if (!out.chains.some((x) => x.name === c.name)) out.chains.push(c);
      return `goto ${c.name}`;
    }
    const map = slotMap(family, p.protocol, !addresses);
    const c = versionedChain(`slots-${addresses ? 'ip' : 'nodeport'}-${p.protocol}-${slotted.length}${masquerade ? '-masq' : ''}-`, [
      ...(masquerade ? [MARK_MASQ] : []),
      `dnat ${nf} to ${map.key} . numgen random mod ${slotted.length} map @${map.name}`,
    ]);
    out.shared.push(c);
    for (const prefix of addresses ? addresses.map((ip) => `${ip} . ${p.port}`) : [String(p.nodePort)]) {
      slotted.forEach((e, slot) => element(map.name, `${prefix} . ${slot}`, `${e.ip} . ${e.port}`));
    }
    return `goto ${c.name}`;
  };
  if (p.clusterEndpoints.length) {
    const verdict = balance('svc', p.clusterEndpoints, true, p.clusterIPs);
    for (const vip of p.clusterIPs) element(MAPS.serviceIPs, key(vip, p.port), verdict);
  } else {
    for (const vip of p.clusterIPs) element(MAPS.noEndpointIPs, key(vip, p.port), 'goto reject-chain');
  }
  if (!p.externalIPs.length && p.nodePort === undefined) return out;
  if (p.externalEndpoints.length) {
    const masquerade = !p.externalLocal;
    if (p.externalIPs.length) {
      const verdict = balance('ext', p.externalEndpoints, masquerade, p.externalIPs);
      for (const ip of p.externalIPs) element(MAPS.serviceIPs, key(ip, p.port), verdict);
    }
    if (p.nodePort) element(MAPS.nodePorts, `${p.protocol} . ${p.nodePort}`, balance('ext', p.externalEndpoints, masquerade));
  } else {
    for (const ip of p.externalIPs) element(MAPS.noEndpointIPs, key(ip, p.port), 'goto reject-chain');
    if (p.nodePort) element(MAPS.noEndpointNodePorts, `${p.protocol} . ${p.nodePort}`, 'goto reject-chain');
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
  const verdictMaps = (byAddressMap: MapName, byPortMap: MapName): [MapName, NftMap][] => [
    [byAddressMap, { definition: byAddress, groups: [] }],
    [byPortMap, { definition: byPort, groups: [] }],
  ];
  const local = cidrs.length ? `${nf} daddr { ${cidrs.join(', ')} } fib daddr type local` : 'fib daddr type local';
  const main: NftTable = {
    name: TABLE,
    sets: [],
    maps: new Map(verdictMaps(MAPS.noEndpointIPs, MAPS.noEndpointNodePorts)),
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
  const sharedChains = new Map<string, Set<string>>();
  const shard = (name: string): NftTable => {
    let s = shards.get(name);
    if (!s) {
      s = {
        name,
        sets: [],
        maps: new Map(verdictMaps(MAPS.serviceIPs, MAPS.nodePorts)),
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
    for (const [name, group] of r.elements) {
      const table = MAIN_MAPS.has(name) ? main : shard(r.shard);
      let map = table.maps.get(name);
      // Slot maps are made in a shard when a Service there needs them.
      if (!map) table.maps.set(name, (map = { definition: SLOT_MAP_DEFINITIONS[family].get(name)!, groups: [] }));
      map.groups.push(group);
    }
    if (!r.chains.length && !r.shared.length) continue;
    const s = shard(r.shard);
    s.chains.push(...r.chains);
    let shared = sharedChains.get(s.name);
    if (!shared) sharedChains.set(s.name, (shared = new Set()));
    for (const c of r.shared) {
      if (shared.has(c.name)) continue;
      shared.add(c.name);
      s.chains.push(c);
    }
    s.sets.push(...r.sets);
  }
  return { family: nf, tables: [main, ...[...shards.values()].sort((a, b) => a.name.localeCompare(b.name))] };
}
