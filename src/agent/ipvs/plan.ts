// The proxy model as IPVS state, per family: one virtual server per Service frontend
// (cluster IP, load-balancer / external IP, node address + nodePort) with its real
// servers and weights, the addresses our dummy interface must hold, the ipset entries
// the few iptables rules match on, and those rules. Pure; the applier diffs it
// against the kernel.
import { renderedOnce, type L4, type ModelEndpoint, type ProxyModel, type ServicePortModel } from '../model.ts';
import { MASQ_MARK, TOP, type Chain, chainOf } from '../iptables/render.ts';

export const DUMMY_INTERFACE = 'xb-ipvs0';
export const SCHEDULERS = ['rr', 'wrr', 'lc', 'wlc', 'sh', 'dh', 'sed', 'nq', 'mh'] as const;
export type Scheduler = (typeof SCHEDULERS)[number];

/** ipset names, per family (a set holds one family). */
export const ipsetNames = (family: 4 | 6) => ({
  /** Every virtual server we created: what marks one as ours across restarts. */
  owned: `XB-IPVS-OWNED-${family}`,
  /** Frontends whose traffic is masqueraded (all but external traffic with ETP Local). */
  masq: `XB-IPVS-MASQ-${family}`,
  /** Frontends with no endpoints: rejected at once. */
  reject: `XB-IPVS-REJECT-${family}`,
  /** Addresses on our dummy interface: anything sent to them that is not a Service port is rejected. */
  vips: `XB-IPVS-VIPS-${family}`,
});

export interface RealServer {
  address: string;
  port: number;
  weight: number;
}

export interface VirtualServer {
  protocol: L4;
  address: string;
  port: number;
  scheduler: string;
  /** Persistence (ClientIP affinity) in seconds. */
  persistence?: number;
  reals: RealServer[];
  /** "ip:port" of real servers to keep at weight 0 (draining) rather than delete. */
  draining: string[];
}

export interface IpvsPlan {
  services: Map<string, VirtualServer>;
  /** Addresses for the dummy interface. */
  vips: Set<string>;
  /** Set name -> entries ("ip" or "ip,proto:port"). */
  sets: Record<string, Set<string>>;
  chains: Chain[];
}

export interface IpvsPlanOptions {
  scheduler: Scheduler;
  /** This node's addresses that NodePorts answer on (after --nodeport-addresses). */
  nodeAddresses: string[];
}

const bracket = (ip: string): string => (ip.includes(':') ? `[${ip}]` : ip);
/** The key ipvsadm uses for a virtual server: "-t 10.96.0.10:80". */
export const serviceKey = (protocol: L4, address: string, port: number): string => `${PROTOCOL_FLAG[protocol]} ${bracket(address)}:${port}`;
export const PROTOCOL_FLAG: Record<L4, string> = { tcp: '-t', udp: '-u', sctp: '--sctp-service' };
/** ipset's "ip,proto:port" member. */
export const setMember = (protocol: L4, address: string, port: number): string => `${address},${protocol}:${port}`;

/** rr and lc ignore weights: with unequal weights use their weighted forms, so weights are honoured. */
export function effectiveScheduler(scheduler: Scheduler, endpoints: ModelEndpoint[]): string {
  const weighted = endpoints.some((e) => e.weight !== endpoints[0]!.weight);
  if (!weighted) return scheduler;
  return scheduler === 'rr' ? 'wrr' : scheduler === 'lc' ? 'wlc' : scheduler;
}

interface PortPlan {
  services: [string, VirtualServer][];
  vips: string[];
  owned: string[];
  masq: string[];
  reject: string[];
}

function planPort(p: ServicePortModel, o: IpvsPlanOptions): PortPlan {
  const out: PortPlan = { services: [], vips: [], owned: [], masq: [], reject: [] };
  const frontend = (address: string, port: number, endpoints: ModelEndpoint[], masquerade: boolean): void => {
    const member = setMember(p.protocol, address, port);
    if (!endpoints.length) {
      out.reject.push(member);
      return;
    }
    out.owned.push(member);
    if (masquerade) out.masq.push(member);
    out.services.push([
      serviceKey(p.protocol, address, port),
      {
        protocol: p.protocol,
        address,
        port,
        scheduler: effectiveScheduler(o.scheduler, endpoints),
        ...(p.affinitySeconds ? { persistence: p.affinitySeconds } : {}),
        reals: endpoints.map((e) => ({ address: e.ip, port: e.port, weight: e.weight })),
        draining: p.terminatingEndpoints,
      },
    ]);
  };
  // Cluster traffic is always masqueraded: outside hosts cannot route replies to pod IPs.
  for (const vip of p.clusterIPs) {
    out.vips.push(vip);
    frontend(vip, p.port, p.clusterEndpoints, true);
  }
  for (const ip of p.externalIPs) {
    out.vips.push(ip);
    frontend(ip, p.port, p.externalEndpoints, !p.externalLocal);
  }
  if (p.nodePort) for (const ip of o.nodeAddresses) frontend(ip, p.nodePort, p.externalEndpoints, !p.externalLocal);
  return out;
}

/** The few iptables rules IPVS mode needs: mark for masquerade, masquerade, reject. */
export function ipvsChains(family: 4 | 6): Chain[] {
  const s = ipsetNames(family);
  const icmp = family === 4 ? 'icmp' : 'ipv6-icmp';
  // TCP gets a reset: ICMP errors are rate-limited (ICMPv6 to about one a second).
  const reject = [
    `-p tcp -m set --match-set ${s.reject} dst,dst -m comment --comment "extbackend: service has no endpoints" -j REJECT --reject-with tcp-reset`,
    `-m set --match-set ${s.reject} dst,dst -m comment --comment "extbackend: service has no endpoints" -j REJECT`,
    `-p tcp -m set --match-set ${s.vips} dst -m set ! --match-set ${s.owned} dst,dst -m comment --comment "extbackend: not a service port" -j REJECT --reject-with tcp-reset`,
    `! -p ${icmp} -m set --match-set ${s.vips} dst -m set ! --match-set ${s.owned} dst,dst -m comment --comment "extbackend: not a service port" -j REJECT`,
  ];
  return [
    chainOf('nat', TOP.services, [`-m set --match-set ${s.masq} dst,dst -j MARK --or-mark ${MASQ_MARK}`]),
    chainOf('nat', TOP.postrouting, [
      `-m mark ! --mark ${MASQ_MARK}/${MASQ_MARK} -j RETURN`,
      `-j MARK --xor-mark ${MASQ_MARK}`,
      `-m comment --comment "extbackend: outside hosts cannot route replies to pod or client addresses" -j MASQUERADE`,
    ]),
    chainOf('filter', TOP.filterServices, reject),
    chainOf('filter', TOP.filterExternal, reject),
  ];
}

export class IpvsPlanner {
  // Ports are immutable and reused by the model cache, so their plans are too; a
  // change of node addresses or scheduler starts a fresh cache.
  private cache = new WeakMap<ServicePortModel, PortPlan>();
  private cacheKey = '';

  plan(model: ProxyModel, family: 4 | 6, o: IpvsPlanOptions): IpvsPlan {
    const key = JSON.stringify([o.scheduler, o.nodeAddresses]);
    if (key !== this.cacheKey) {
      this.cache = new WeakMap();
      this.cacheKey = key;
    }
    const names = ipsetNames(family);
    const plan: IpvsPlan = {
      services: new Map(),
      vips: new Set(),
      sets: { [names.owned]: new Set(), [names.masq]: new Set(), [names.reject]: new Set(), [names.vips]: new Set() },
      chains: ipvsChains(family),
    };
    const nodeAddresses = o.nodeAddresses.filter((ip) => ip.includes(':') === (family === 6));
    for (const p of model.ports) {
      if (p.family !== family) continue;
      const r = renderedOnce(this.cache, p, (port) => planPort(port, { ...o, nodeAddresses }));
      for (const [k, vs] of r.services) plan.services.set(k, vs);
      for (const v of r.vips) {
        plan.vips.add(v);
        plan.sets[names.vips]!.add(v);
      }
      for (const m of r.owned) plan.sets[names.owned]!.add(m);
      for (const m of r.masq) plan.sets[names.masq]!.add(m);
      for (const m of r.reject) plan.sets[names.reject]!.add(m);
    }
    return plan;
  }
}
