// The proxy model as iptables rules, per family, in chains of our own (prefix XB-).
// Pure text; the applier decides which chains to (re)write. Every chain starts with a
// no-op rule carrying a hash of its content, so after a restart the applier can tell
// from `iptables-save` which chains are already right and leave them (and their
// counters) alone.
import { createHash } from 'node:crypto';
import { renderedOnce, type ModelEndpoint, type ProxyModel, type ServicePortModel } from '../model.ts';

export const MASQ_MARK = '0x10000';
export const CHAIN_PREFIX = 'XB-';
export const TOP = {
  services: 'XB-SERVICES',
  nodePorts: 'XB-NODEPORTS',
  postrouting: 'XB-POSTROUTING',
  filterServices: 'XB-SERVICES-FILTER',
  filterExternal: 'XB-EXTERNAL-FILTER',
} as const;

export type Table = 'nat' | 'filter';

/** A chain's rules, without the "-A CHAIN" prefix. */
export interface Chain {
  table: Table;
  name: string;
  rules: string[];
  hash: string;
}

/** Jumps from the built-in chains into ours: [table, built-in chain, rule spec]. */
export const HOOKS: [Table, string, string][] = [
  ['nat', 'PREROUTING', `-m comment --comment "extbackend service portals" -j ${TOP.services}`],
  ['nat', 'OUTPUT', `-m comment --comment "extbackend service portals" -j ${TOP.services}`],
  ['nat', 'POSTROUTING', `-m comment --comment "extbackend postrouting" -j ${TOP.postrouting}`],
  ['filter', 'INPUT', `-m conntrack --ctstate NEW -m comment --comment "extbackend external services" -j ${TOP.filterExternal}`],
  ['filter', 'FORWARD', `-m conntrack --ctstate NEW -m comment --comment "extbackend services" -j ${TOP.filterServices}`],
  ['filter', 'FORWARD', `-m conntrack --ctstate NEW -m comment --comment "extbackend external services" -j ${TOP.filterExternal}`],
  ['filter', 'OUTPUT', `-m conntrack --ctstate NEW -m comment --comment "extbackend services" -j ${TOP.filterServices}`],
];

function hashName(prefix: string, ...parts: string[]): string {
  const h = createHash('sha256').update(parts.join('|')).digest('base64url').replace(/[-_]/g, 'x').slice(0, 16).toUpperCase();
  return `${prefix}${h}`;
}

export const svcChain = (p: Pick<ServicePortModel, 'id'>): string => hashName('XB-SVC-', p.id);
export const extChain = (p: ServicePortModel): string => hashName('XB-EXT-', p.id);
export const sepChain = (p: ServicePortModel, e: ModelEndpoint): string => hashName('XB-SEP-', p.id, `${e.ip}:${e.port}`);

const host = (ip: string, family: 4 | 6): string => `${ip}/${family === 4 ? 32 : 128}`;
const endpointAddr = (e: ModelEndpoint, family: 4 | 6): string => (family === 4 ? `${e.ip}:${e.port}` : `[${e.ip}]:${e.port}`);
const comment = (text: string): string => `-m comment --comment "${text.replace(/"/g, '')}"`;
const match = (p: ServicePortModel, port: number): string => `-p ${p.protocol} -m ${p.protocol} --dport ${port}`;
/**
 * Refuses a connection at once: a TCP reset for TCP (ICMP errors are rate-limited,
 * ICMPv6 ones to about one a second, so IPv6 clients would mostly wait for a timeout),
 * ICMP port unreachable for the rest.
 */
const reject = (p: ServicePortModel): string => (p.protocol === 'tcp' ? '-j REJECT --reject-with tcp-reset' : '-j REJECT');

/**
 * Probability rules for weighted random choice: rule i takes w_i / (w_i + ... + w_n) of
 * what reaches it. Without affinity the rules DNAT directly: no chain per endpoint,
 * which keeps large rule sets fast to load (iptables-nft pays per chain). No comment
 * or `-m tcp` on these rules: the kernel re-validates every rule of the nat table on
 * each commit, and each match is one more to check (a one-Service change at 10 000
 * Services went from 130 to 75 ms without them and the jump below).
 */
function balance(p: ServicePortModel, endpoints: ModelEndpoint[]): string[] {
  const rules: string[] = [];
  let remaining = endpoints.reduce((n, e) => n + e.weight, 0);
  endpoints.forEach((e, i) => {
    const target = p.affinitySeconds ? `-j ${sepChain(p, e)}` : `-p ${p.protocol} -j DNAT --to-destination ${endpointAddr(e, p.family)}`;
    const chance = i === endpoints.length - 1 ? '' : `-m statistic --mode random --probability ${(e.weight / remaining).toFixed(10)} `;
    rules.push(`${chance}${target}`);
    remaining -= e.weight;
  });
  return rules;
}

/** Marks the connection for masquerade: inline, since a jump per Service chain doubles what the kernel validates. */
const MARK_MASQ = `-j MARK --or-mark ${MASQ_MARK}`;

/** With ClientIP affinity, a client seen recently goes back to the same endpoint. */
function affinity(p: ServicePortModel, endpoints: ModelEndpoint[]): string[] {
  if (!p.affinitySeconds) return [];
  return endpoints.map((e) => `${comment(`${p.id} -> ${endpointAddr(e, p.family)}`)} -m recent --name ${sepChain(p, e)} --mask ${p.family === 4 ? '255.255.255.255' : 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'} --rsource --rcheck --seconds ${p.affinitySeconds} --reap -j ${sepChain(p, e)}`);
}

export interface RenderOptions {
  /** NodePorts only on these CIDRs (--nodeport-addresses); every local address when empty. */
  nodePortCIDRs: string[];
}

/**
 * A chain whose first rule carries the hash of its content (a comment-only rule when it
 * has none) and what the chain is for: not a rule of its own, because every rule in the
 * nat table costs kernel time on each commit (the kernel walks the whole table from each
 * hook). The rules that jump to a Service's chain carry no comment for the same reason
 * (and because each packet walks them): its first rule names the Service.
 */
export function chainOf(table: Table, name: string, rules: string[], label?: string): Chain {
  const hash = createHash('sha256').update(rules.join('\n')).digest('hex').slice(0, 16);
  const tag = comment(`xb-hash:${hash}${label ? ` ${label}` : ''}`);
  const [first, ...rest] = rules;
  return { table, name, rules: first === undefined ? [tag] : [`${tag} ${first}`, ...rest], hash };
}

/** What one service port contributes: its own chains and its rules in the shared chains. */
interface PortRules {
  chains: Chain[];
  services: string[];
  nodePorts: string[];
  filterServices: string[];
  filterExternal: string[];
}

function renderPort(p: ServicePortModel, family: 4 | 6): PortRules {
  const out: PortRules = { chains: [], services: [], nodePorts: [], filterServices: [], filterExternal: [] };
  const seps = new Set<string>();
  const ensureSep = (e: ModelEndpoint): void => {
    const name = sepChain(p, e);
    if (seps.has(name)) return;
    seps.add(name);
    const rules: string[] = [];
    if (p.affinitySeconds) rules.push(`${comment(p.id)} -m recent --name ${name} --mask ${p.family === 4 ? '255.255.255.255' : 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'} --rsource --set`);
    rules.push(`-p ${p.protocol} -j DNAT --to-destination ${endpointAddr(e, p.family)}`);
    out.chains.push(chainOf('nat', name, rules, `${p.id} -> ${endpointAddr(e, p.family)}`));
  };
  // Cluster traffic: always masqueraded, since outside hosts cannot reach pod IPs.
  if (p.clusterEndpoints.length) {
    const svc = svcChain(p);
    out.chains.push(chainOf('nat', svc, [MARK_MASQ, ...affinity(p, p.clusterEndpoints), ...balance(p, p.clusterEndpoints)], p.id));
    if (p.affinitySeconds) p.clusterEndpoints.forEach(ensureSep);
    for (const vip of p.clusterIPs) out.services.push(`-d ${host(vip, family)} ${match(p, p.port)} -j ${svc}`);
  } else {
    for (const vip of p.clusterIPs) out.filterServices.push(`-d ${host(vip, family)} ${comment(`${p.id} has no endpoints`)} ${match(p, p.port)} ${reject(p)}`);
  }
  // External traffic: NodePort, load-balancer and allowed external IPs.
  if (!p.externalIPs.length && p.nodePort === undefined) return out;
  if (p.externalEndpoints.length) {
    const ext = extChain(p);
    out.chains.push(chainOf('nat', ext, [...(p.externalLocal ? [] : [MARK_MASQ]), ...affinity(p, p.externalEndpoints), ...balance(p, p.externalEndpoints)], `${p.id} external`));
    if (p.affinitySeconds) p.externalEndpoints.forEach(ensureSep);
    for (const ip of p.externalIPs) out.services.push(`-d ${host(ip, family)} ${match(p, p.port)} -j ${ext}`);
    if (p.nodePort) out.nodePorts.push(`${match(p, p.nodePort)} -j ${ext}`);
  } else {
    const why = comment(`${p.id} has no ${p.externalLocal ? 'local ' : ''}endpoints`);
    for (const ip of p.externalIPs) out.filterServices.push(`-d ${host(ip, family)} ${why} ${match(p, p.port)} ${reject(p)}`);
    if (p.nodePort) out.filterExternal.push(`-m addrtype --dst-type LOCAL ${why} ${match(p, p.nodePort)} ${reject(p)}`);
  }
  return out;
}

// Ports are immutable and reused by the model cache between syncs, so their rules are too.
const portCache = new WeakMap<ServicePortModel, PortRules>();

const SHARED = ['services', 'nodePorts', 'filterServices', 'filterExternal'] as const;
const sameShared = (a: PortRules, b: PortRules): boolean => a === b || SHARED.every((k) => a[k].length === b[k].length && a[k].every((r, i) => r === b[k][i]));

/** The last shared chains per family: rebuilding (and hashing) them costs ~10 ms at 10 000 Services, and most syncs change none of them. */
const sharedMemo = new Map<string, { ports: PortRules[]; chains: Chain[] }>();

export function renderIptables(model: ProxyModel, family: 4 | 6, options: RenderOptions): Chain[] {
  const rendered: PortRules[] = [];
  const own: Chain[] = [];
  for (const p of model.ports) {
    if (p.family !== family) continue;
    const r = renderedOnce(portCache, p, (port) => renderPort(port, family));
    rendered.push(r);
    for (const c of r.chains) own.push(c);
  }
  const cidrs = options.nodePortCIDRs.filter((c) => c.includes(':') === (family === 6));
  const memoKey = `${family}|${cidrs.join(',')}`;
  const memo = sharedMemo.get(memoKey);
  let shared = memo?.chains;
  if (!memo || memo.ports.length !== rendered.length || !rendered.every((r, i) => sameShared(r, memo.ports[i]!))) {
    shared = sharedChains(rendered, cidrs);
  }
  sharedMemo.set(memoKey, { ports: rendered, chains: shared! });
  const [services, nodePorts, postrouting, filterServices, filterExternal] = shared!;
  return [services!, nodePorts!, postrouting!, ...own, filterServices!, filterExternal!];
}

function sharedChains(rendered: PortRules[], cidrs: string[]): Chain[] {
  const services = rendered.flatMap((r) => r.services);
  // NodePorts last: only after no cluster IP matched, and only for local destinations.
  if (cidrs.length) for (const cidr of cidrs) services.push(`-d ${cidr} -m addrtype --dst-type LOCAL -j ${TOP.nodePorts}`);
  else services.push(`-m addrtype --dst-type LOCAL -j ${TOP.nodePorts}`);
  return [
    chainOf('nat', TOP.services, services),
    chainOf('nat', TOP.nodePorts, rendered.flatMap((r) => r.nodePorts)),
    chainOf('nat', TOP.postrouting, [
      `-m mark ! --mark ${MASQ_MARK}/${MASQ_MARK} -j RETURN`,
      `-j MARK --xor-mark ${MASQ_MARK}`,
      `${comment('extbackend: outside hosts cannot route replies to pod or client addresses')} -j MASQUERADE`,
    ]),
    chainOf('filter', TOP.filterServices, rendered.flatMap((r) => r.filterServices)),
    chainOf('filter', TOP.filterExternal, rendered.flatMap((r) => r.filterExternal)),
  ];
}

/** iptables-restore input that (re)writes `write` and deletes `remove`, leaving every other chain as it is. */
export function restoreInput(write: Chain[], remove: { table: Table; name: string }[]): string {
  const out: string[] = [];
  for (const table of ['nat', 'filter'] as const) {
    const w = write.filter((c) => c.table === table);
    const r = remove.filter((c) => c.table === table);
    if (!w.length && !r.length) continue;
    out.push(`*${table}`);
    // Declaring a chain creates it, or flushes it when it exists (with --noflush, only these).
    for (const c of [...w, ...r]) out.push(`:${c.name} - [0:0]`);
    for (const c of w) for (const rule of c.rules) out.push(`-A ${c.name} ${rule}`);
    for (const c of r) out.push(`-X ${c.name}`);
    out.push('COMMIT');
  }
  return out.length ? `${out.join('\n')}\n` : '';
}
