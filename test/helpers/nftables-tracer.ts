// Walks rendered nftables tables for one packet, like the iptables tracer: which
// endpoint (with what probability) it is DNATed to, whether it is marked for
// masquerade, or whether it is rejected. Understands exactly the statements the
// renderer emits; anything else fails loudly. NAT hooks run table after table (the
// shards) until one translates; the filter hooks are the main table's.
import { mapElements, MASQ_MARK, TABLE, type NftState, type NftTable } from '../../src/agent/nftables/render.ts';
import { cidrContains, parseCidr, parseIP } from '../../src/net/ip.ts';
import type { Outcome, Packet } from './iptables-tracer.ts';

interface State {
  masquerade: boolean;
  probability: number;
}

export function traceNft(state: NftState, packet: Packet): Outcome[] {
  const outcomes: Outcome[] = [];
  const nf = state.family;
  let table: NftTable = state.tables[0]!;
  let chains = new Map<string, NftTable['chains'][number]>();
  const enter = (t: NftTable): void => {
    table = t;
    chains = new Map(t.chains.map((c) => [c.name, c]));
  };

  /** Evaluates a map lookup statement: the verdict for this packet, if any. */
  const lookup = (rule: string): string | undefined => {
    const map = /vmap @(\S+)$/.exec(rule)?.[1];
    if (!map) return undefined;
    const found = table.maps.get(map);
    if (!found) throw new Error(`tracer: no map ${map} in table ${table.name}`);
    const elements = mapElements(found);
    if (rule.startsWith(`${nf} daddr . meta l4proto . th dport`)) return elements.get(`${packet.dst} . ${packet.protocol} . ${packet.dport}`);
    // Node ports: only to local destinations (optionally inside --nodeport-addresses).
    const cidrs = /daddr \{ ([^}]+) \}/.exec(rule)?.[1]?.split(', ') ?? [];
    if (!packet.dstLocal) return undefined;
    if (cidrs.length && !cidrs.some((c) => cidrContains(parseCidr(c)!, parseIP(packet.dst)!))) return undefined;
    return elements.get(`${packet.protocol} . ${packet.dport}`);
  };

  /** Runs a chain; returns the probability mass that fell through (return or end of chain). */
  const run = (name: string, s0: State): State | undefined => {
    const chain = chains.get(name);
    if (!chain) throw new Error(`tracer: no chain ${name}`);
    let s: State | undefined = { ...s0 };
    for (const original of chain.rules) {
      if (!s) return undefined;
      let rule = original.replace(/^counter\s*/, '').replace(/ counter /, ' ');
      // `numgen random mod R < w ...`: taken with probability w/R.
      let chance = 1;
      const ng = /^numgen random mod (\d+) < (\d+) /.exec(rule);
      if (ng) {
        chance = Number(ng[2]) / Number(ng[1]);
        rule = rule.slice(ng[0].length);
      }
      const taken: State = { ...s, probability: s.probability * chance };
      const rest: State | undefined = chance < 1 ? { ...s, probability: s.probability * (1 - chance) } : undefined;
      let verdict: string | undefined;
      if (rule === '' || rule.startsWith('comment ')) continue; // the hash/counter rule
      if (rule.includes(' vmap @')) {
        verdict = lookup(rule);
        if (verdict === undefined) continue;
      } else if (rule.startsWith(`${nf} saddr @`)) {
        continue; // affinity: a client with no history
      } else if (rule.startsWith('meta mark set meta mark | ')) {
        if (rule.endsWith(MASQ_MARK)) s = { ...s, masquerade: true };
        continue;
      } else if (rule.startsWith('update @')) {
        continue;
      } else if (rule.startsWith('ct state new ')) {
        rule = rule.slice('ct state new '.length); // the traced packet is a new connection
        verdict = rule;
      } else {
        verdict = rule;
      }
      // Slots: `dnat ip to [ip daddr .] tcp dport . numgen random mod W map @m`, each slot with chance 1/W; a miss falls through.
      const slotted = /^dnat ip6? to (?:(ip6?) daddr \. )?(\w+) dport \. numgen random mod (\d+) map @(\S+)$/.exec(verdict);
      if (slotted) {
        const [, byAddress, protocol, mod, map] = slotted;
        const found = table.maps.get(map!);
        if (!found) throw new Error(`tracer: no map ${map} in table ${table.name}`);
        const elements = mapElements(found);
        const prefix = byAddress ? `${packet.dst} . ${packet.dport}` : String(packet.dport);
        const slots = Number(mod);
        let missed = 0;
        for (let slot = 0; slot < slots; slot++) {
          const endpoint = protocol === packet.protocol ? elements.get(`${prefix} . ${slot}`) : undefined;
          if (endpoint === undefined) missed++;
          else outcomes.push({ verdict: endpoint.replace(' . ', ':'), masquerade: taken.masquerade, probability: taken.probability / slots });
        }
        const through = missed ? { ...taken, probability: (taken.probability * missed) / slots } : undefined;
        s = rest && through ? { ...rest, probability: rest.probability + through.probability } : (rest ?? through);
        continue;
      }
      const dnat = /^meta l4proto (\w+) dnat to (\S+)$/.exec(verdict);
      if (dnat) {
        if (dnat[1] === packet.protocol) outcomes.push({ verdict: dnat[2]!.replace(/^\[|\](?=:)/g, ''), masquerade: taken.masquerade, probability: taken.probability });
        s = rest;
        continue;
      }
      const tcpReset = /^meta l4proto (\w+) reject with tcp reset$/.exec(verdict);
      if (tcpReset) {
        if (tcpReset[1] !== packet.protocol) continue;
        verdict = 'reject';
      }
      if (verdict === 'reject') {
        outcomes.push({ verdict: 'REJECT', masquerade: false, probability: taken.probability });
        s = rest;
        continue;
      }
      const jump = /^(jump|goto) (\S+)$/.exec(verdict);
      if (!jump) throw new Error(`tracer: unknown statement "${original}"`);
      const back = run(jump[2]!, taken);
      if (jump[1] === 'jump' && back) {
        s = rest ? { ...back, probability: back.probability + rest.probability } : back;
        continue;
      }
      // goto: the mass that falls through the target returns to our caller.
      if (back) return rest ? { ...back, probability: back.probability + rest.probability } : back;
      s = rest;
    }
    return s;
  };

  // nat prerouting/output (DNAT), shard after shard, comes before the filter hooks (REJECT).
  let fell: State | undefined = { masquerade: false, probability: 1 };
  for (const shard of state.tables.filter((t) => t.name !== TABLE)) {
    if (!fell || fell.probability <= 1e-9) break;
    enter(shard);
    fell = run('services', fell);
  }
  if (fell && fell.probability > 1e-9) {
    enter(state.tables.find((t) => t.name === TABLE)!);
    const f = run(packet.dstLocal ? 'external-filter' : 'services-filter', fell);
    if (f && f.probability > 1e-9) outcomes.push({ verdict: 'ACCEPT', masquerade: f.masquerade, probability: f.probability });
  }
  return outcomes;
}
