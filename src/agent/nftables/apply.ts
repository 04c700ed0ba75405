// Applies an NftState with one `nft -f` transaction per family and sync. Chains are
// rewritten only when their content hash (kept in a comment on their first rule)
// differs from the kernel's; map elements are diffed against what we last wrote, and
// on a full sync each map is flushed and refilled inside the same transaction (atomic:
// no packet sees it empty). Only our table is ever touched.
import { runTool } from '../../net/system-command.ts';
import { mapDefinitions, TABLE, type MapName, type NftState } from './render.ts';

/** Chains (with their hash comment) and sets of our table, from `nft list table`. */
export function parseTable(text: string): { chains: Map<string, string | undefined>; sets: Set<string> } {
  const chains = new Map<string, string | undefined>();
  const sets = new Set<string>();
  let current: string | undefined;
  for (const line of text.split('\n')) {
    const chain = /^\s*chain (\S+) \{/.exec(line);
    if (chain) {
      current = chain[1]!;
      chains.set(current, undefined);
      continue;
    }
    const set = /^\s*set (\S+) \{/.exec(line);
    if (set) {
      sets.add(set[1]!);
      current = undefined;
      continue;
    }
    const hash = /comment "xb-hash:([0-9a-f]+)"/.exec(line);
    if (current && hash && chains.get(current) === undefined) chains.set(current, hash[1]);
  }
  return { chains, sets };
}

const nft = (args: string[], input?: string): Promise<string> => runTool('nft', args, input);

/** Stale chains are deleted referrers first: service chains before endpoint chains. */
const deleteOrder = (name: string): number => (name.startsWith('svc-') || name.startsWith('ext-') ? 0 : name.startsWith('sep-') ? 1 : 2);

export class NftablesApplier {
  private readonly family: 'ip' | 'ip6';
  private chains = new Map<string, string | undefined>();
  private sets = new Set<string>();
  private elements: Record<MapName, Map<string, string>> | undefined;
  private loaded = false;

  constructor(family: 'ip' | 'ip6') {
    this.family = family;
  }

  private async load(): Promise<void> {
    let text = '';
    try {
      text = await nft(['list', 'table', this.family, TABLE]);
    } catch {
      text = ''; // no table yet
    }
    const parsed = parseTable(text);
    this.chains = parsed.chains;
    this.sets = parsed.sets;
    this.elements = undefined; // unknown: refill the maps
    this.loaded = true;
  }

  async apply(state: NftState, full: boolean): Promise<{ written: number; names: string[]; deleted: number; rules: number; elements: number }> {
    if (full || !this.loaded) await this.load();
    const t = `${this.family} ${TABLE}`;
    const lines: string[] = [`add table ${t}`];
    for (const [name, def] of Object.entries(mapDefinitions(this.family))) lines.push(`add map ${t} ${name} { ${def} }`);
    for (const s of state.sets) if (!this.sets.has(s.name)) lines.push(`add set ${t} ${s.name} { ${s.definition} }`);
    const write = state.chains.filter((c) => this.chains.get(c.name) !== c.hash);
    // Create every new chain first, so rules and map elements may refer to any of them.
    for (const c of write) if (!this.chains.has(c.name)) lines.push(`add chain ${t} ${c.name}${c.base ? ` { ${c.base} }` : ''}`);
    for (const c of write) {
      if (this.chains.has(c.name)) lines.push(`flush chain ${t} ${c.name}`);
      lines.push(`add rule ${t} ${c.name} counter comment "xb-hash:${c.hash}"`);
      for (const r of c.rules) lines.push(`add rule ${t} ${c.name} ${r}`);
    }
    let elementChanges = 0;
    for (const [map, wanted] of Object.entries(state.maps) as [MapName, Map<string, string>][]) {
      const had = this.elements?.[map];
      if (!had) {
        lines.push(`flush map ${t} ${map}`);
        if (wanted.size) lines.push(`add element ${t} ${map} { ${[...wanted].map(([k, v]) => `${k} : ${v}`).join(', ')} }`);
        elementChanges += wanted.size;
        continue;
      }
      const gone = [...had].filter(([k, v]) => wanted.get(k) !== v).map(([k]) => k);
      const added = [...wanted].filter(([k, v]) => had.get(k) !== v);
      if (gone.length) lines.push(`delete element ${t} ${map} { ${gone.join(', ')} }`);
      if (added.length) lines.push(`add element ${t} ${map} { ${added.map(([k, v]) => `${k} : ${v}`).join(', ')} }`);
      elementChanges += gone.length + added.length;
    }
    const wantedChains = new Set(state.chains.map((c) => c.name));
    const stale = [...this.chains.keys()].filter((n) => !wantedChains.has(n)).sort((a, b) => deleteOrder(a) - deleteOrder(b));
    for (const name of stale) lines.push(`delete chain ${t} ${name}`);
    const wantedSets = new Set(state.sets.map((s) => s.name));
    const staleSets = [...this.sets].filter((s) => !wantedSets.has(s));
    for (const name of staleSets) lines.push(`delete set ${t} ${name}`);

    const changed = write.length > 0 || elementChanges > 0 || stale.length > 0 || staleSets.length > 0 || state.sets.some((s) => !this.sets.has(s.name));
    if (changed) {
      try {
        await nft(['-f', '-'], `${lines.join('\n')}\n`);
      } catch (err) {
        this.loaded = false;
        throw err;
      }
    }
    for (const c of write) this.chains.set(c.name, c.hash);
    for (const n of stale) this.chains.delete(n);
    this.sets = new Set(state.sets.map((s) => s.name));
    this.elements = Object.fromEntries(Object.entries(state.maps).map(([k, v]) => [k, new Map(v)])) as Record<MapName, Map<string, string>>;
    return { written: write.length, names: write.map((c) => c.name), deleted: stale.length, rules: write.reduce((n, c) => n + c.rules.length + 1, 0), elements: elementChanges };
  }

  /** Deletes our table (and with it everything the agent made in this family). */
  async cleanup(): Promise<number> {
    try {
      await nft(['delete', 'table', this.family, TABLE]);
      return 1;
    } catch {
      return 0;
    }
  }
}
