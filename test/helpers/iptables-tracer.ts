// Walks rendered iptables chains for one packet, as kube-proxy's own tests do: which
// endpoint (with what probability) it is DNATed to, whether it is marked for
// masquerade, or whether it is rejected. Understands exactly the matches and targets
// the renderer emits; anything else fails loudly.
import { splitRule } from '../../src/agent/iptables/apply.ts';
import { MASQ_MARK, TOP, type Chain } from '../../src/agent/iptables/render.ts';
import { cidrContains, parseCidr, parseIP } from '../../src/net/ip.ts';

export interface Packet {
  dst: string;
  protocol: 'tcp' | 'udp' | 'sctp';
  dport: number;
  /** The destination is one of this node's addresses (NodePorts answer there). */
  dstLocal?: boolean;
}

export interface Outcome {
  /** "ip:port" after DNAT, "REJECT", or "ACCEPT" when no rule of ours took it. */
  verdict: string;
  masquerade: boolean;
  probability: number;
}

interface State {
  masquerade: boolean;
  probability: number;
}

function matches(args: string[], p: Packet): boolean {
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const next = (): string => args[++i]!;
    switch (a) {
      case '-d': {
        const cidr = parseCidr(next())!;
        if (!cidrContains(cidr, parseIP(p.dst)!)) return false;
        break;
      }
      case '-p':
        if (next() !== p.protocol) return false;
        break;
      case '--dport':
        if (Number(next()) !== p.dport) return false;
        break;
      case '--dst-type':
        if (next() !== 'LOCAL' || !p.dstLocal) return false;
        break;
      case '-m': {
        const mod = next();
        if (!['tcp', 'udp', 'sctp', 'comment', 'addrtype', 'statistic', 'recent', 'conntrack', 'mark'].includes(mod)) throw new Error(`tracer: unknown match ${mod}`);
        break;
      }
      case '--comment':
      case '--reject-with':
      case '--mode':
      case '--name':
      case '--mask':
      case '--seconds':
        next();
        break;
      case '--rsource':
      case '--reap':
      case '--set':
        break;
      case '--rcheck':
        return false; // a client with no affinity history
      case '--probability':
        next(); // handled by the caller
        break;
      case '-j':
        return true;
      default:
        throw new Error(`tracer: unknown argument ${a}`);
    }
  }
  return true;
}

export function trace(chains: Chain[], packet: Packet): Outcome[] {
  const byName = new Map(chains.map((c) => [`${c.table}/${c.name}`, c]));
  const outcomes: Outcome[] = [];

  /** Runs a chain; returns the probability mass that fell through (RETURN or end of chain). */
  const run = (table: 'nat' | 'filter', name: string, state: State): State | undefined => {
    const chain = byName.get(`${table}/${name}`);
    if (!chain) throw new Error(`tracer: no chain ${table}/${name}`);
    let s: State | undefined = { ...state };
    for (const rule of chain.rules) {
      if (!s) return undefined;
      const args = splitRule(rule);
      if (!matches(args, packet)) continue;
      const probIdx = args.indexOf('--probability');
      const p = probIdx >= 0 ? Number(args[probIdx + 1]) : 1;
      const taken: State = { ...s, probability: s.probability * p };
      const rest: State | undefined = p < 1 ? { ...s, probability: s.probability * (1 - p) } : undefined;
      const target = args[args.indexOf('-j') + 1];
      if (target === undefined || args.indexOf('-j') < 0) continue; // the hash rule: no target
      if (target === 'DNAT') outcomes.push({ verdict: args[args.indexOf('--to-destination') + 1]!, masquerade: taken.masquerade, probability: taken.probability });
      else if (target === 'REJECT') outcomes.push({ verdict: 'REJECT', masquerade: false, probability: taken.probability });
      else if (target === 'MARK') {
        if (args.includes('--or-mark') && args[args.indexOf('--or-mark') + 1] === MASQ_MARK) s = { ...s, masquerade: true };
        continue;
      } else if (target === 'RETURN') return s;
      else {
        const back = run(table, target, taken);
        if (back) {
          // A chain that fell through continues here, with the state it ended in.
          s = rest ? { ...back, probability: back.probability + rest.probability } : back;
          continue;
        }
      }
      s = rest;
    }
    return s;
  };

  // nat (DNAT) comes before filter (REJECT) on the same hook.
  const fell = run('nat', TOP.services, { masquerade: false, probability: 1 });
  if (fell && fell.probability > 1e-9) {
    const filter = packet.dstLocal ? TOP.filterExternal : TOP.filterServices;
    const f = run('filter', filter, fell);
    if (f && f.probability > 1e-9) outcomes.push({ verdict: 'ACCEPT', masquerade: f.masquerade, probability: f.probability });
  }
  return outcomes;
}

/** Probability per verdict, rounded, for readable assertions. */
export function verdicts(outcomes: Outcome[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const o of outcomes) out[o.verdict] = Math.round(((out[o.verdict] ?? 0) + o.probability) * 1000) / 1000;
  return out;
}
