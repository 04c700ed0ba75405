// Applies an NftState with one `nft -f` transaction per family and sync. What the
// kernel holds is learned cheaply: table, chain, set and map names (`nft list chains`
// is fast; `nft list table` would print every rule, seconds at 10 000 Services).
// Service chains carry their content hash in their name, so existing ones are right;
// fixed chains are rewritten when their hash differs from what we last wrote (always on
// a full sync). Map elements are diffed against what we last wrote. A map whose elements
// we do not know (after a restart or a failed apply) is flushed and refilled inside the
// same transaction (atomic: no packet sees it empty); a periodic full sync keeps the
// element knowledge of its maps that still exist, because refilling some 100 000 slot
// elements at 10 000 Services would cost a second every sync period. Only our tables
// are ever touched.
import { runTool } from '../../net/system-command.ts';
import { MapContent } from './map-content.ts';
import { isOurTable, type NftElement, type NftState } from './render.ts';

/** What we know a table holds: chain name -> hash we wrote (undefined: content unknown); sets; maps with their elements (undefined: unknown). */
interface KnownTable {
  chains: Map<string, string | undefined>;
  sets: Set<string>;
  maps: Map<string, MapContent | undefined>;
}

const elementList = (added: NftElement[]): string => added.map(([k, v]) => `${k} : ${v}`).join(', ');

/** `nft list chains|sets|maps <family>` output (one or several) -> table -> names of the given kind, for our tables. */
export function parseListing(text: string, kind: 'chain' | 'set' | 'map'): Map<string, string[]> {
  const tables = new Map<string, string[]>();
  const itemLine = new RegExp(`^\\s+${kind} (\\S+) \\{`);
  let current: string[] | undefined;
  for (const line of text.split('\n')) {
    const table = /^table \S+ (\S+)/.exec(line);
    if (table) {
      const name = table[1]!;
      current = isOurTable(name) ? (tables.get(name) ?? []) : undefined;
      if (current) tables.set(name, current);
      continue;
    }
    const item = itemLine.exec(line);
    if (item && current) current.push(item[1]!);
  }
  return tables;
}

/** Runs nft with these arguments (and stdin); tests pass one that runs it in a namespace. */
export type NftRunner = (args: string[], input?: string) => Promise<string>;
const systemNft: NftRunner = (args, input) => runTool('nft', args, input);

/** Stale chains are deleted referrers first: service chains before endpoint chains before fixed ones. */
const deleteOrder = (name: string): number => (name.startsWith('svc-') || name.startsWith('ext-') ? 0 : name.startsWith('sep-') ? 1 : name.startsWith('nat-') || name.startsWith('filter-') ? 2 : 3);

export interface NftApplyResult {
  written: number;
  names: string[];
  deleted: number;
  elements: number;
}

export class NftablesApplier {
  private readonly family: 'ip' | 'ip6';
  private readonly nft: NftRunner;
  private known = new Map<string, KnownTable>();
  private loaded = false;

  constructor(family: 'ip' | 'ip6', nft: NftRunner = systemNft) {
    this.family = family;
    this.nft = nft;
  }

  /** Names of everything in our tables now (after a restart, or to verify on a full sync). */
  private async load(): Promise<void> {
    // What we wrote is still what a map holds if the last apply succeeded and the map is still there.
    const previous = this.loaded ? this.known : new Map<string, KnownTable>();
    this.known = new Map();
    // One nft process for the three listings (terse: no set elements).
    const listing = await this.nft(['-t', '-f', '-'], `list chains ${this.family}\nlist sets ${this.family}\nlist maps ${this.family}\n`);
    for (const [table, names] of parseListing(listing, 'chain')) this.known.set(table, { chains: new Map(names.map((n) => [n, undefined])), sets: new Set(), maps: new Map() });
    for (const [table, names] of parseListing(listing, 'set')) for (const n of names) this.known.get(table)?.sets.add(n);
    for (const [table, names] of parseListing(listing, 'map')) for (const n of names) this.known.get(table)?.maps.set(n, previous.get(table)?.maps.get(n));
    this.loaded = true;
  }

  async apply(state: NftState, full: boolean): Promise<NftApplyResult> {
    if (full || !this.loaded) await this.load();
    const lines: string[] = [];
    const deletes: string[] = [];
    const written: string[] = [];
    let elements = 0;
    let deleted = 0;
    const wantedTables = new Set(state.tables.map((t) => t.name));
    const wantedContents = new Map<string, Map<string, MapContent>>();
    for (const table of state.tables) {
      const t = `${this.family} ${table.name}`;
      const known: KnownTable = this.known.get(table.name) ?? { chains: new Map(), sets: new Set(), maps: new Map() };
      if (!this.known.has(table.name)) lines.push(`add table ${t}`);
      for (const [name, m] of table.maps) if (!known.maps.has(name)) lines.push(`add map ${t} ${name} { ${m.definition} }`);
      for (const s of table.sets) if (!known.sets.has(s.name)) lines.push(`add set ${t} ${s.name} { ${s.definition} }`);
      const write = table.chains.filter((c) => !known.chains.has(c.name) || (!c.versioned && known.chains.get(c.name) !== c.hash));
      // Create every new chain first, so rules and map elements may refer to any of them.
      for (const c of write) if (!known.chains.has(c.name)) lines.push(`add chain ${t} ${c.name}${c.base ? ` { ${c.base} }` : ''}`);
      for (const c of write) if (known.chains.has(c.name)) lines.push(`flush chain ${t} ${c.name}`);
      // Rules in one block per table: nft parses it faster than an `add rule` command per rule.
      if (write.length) {
        lines.push(`table ${t} {`);
        for (const c of write) {
          // The first rule also counts what enters the chain.
          lines.push(`chain ${c.name} {`, ...c.rules.map((r, i) => (i ? r : `counter ${r}`)), '}');
          written.push(c.name);
        }
        lines.push('}');
      }
      const contents = new Map<string, MapContent>();
      for (const [name, m] of table.maps) {
        let content = known.maps.get(name);
        if (!content) {
          // Unknown content (after a restart or a failed apply): refill, atomically.
          if (known.maps.has(name)) lines.push(`flush map ${t} ${name}`);
          content = new MapContent();
        }
        contents.set(name, content);
        const { gone, added } = content.update(m.groups);
        if (gone.length) lines.push(`delete element ${t} ${name} { ${gone.join(', ')} }`);
        if (added.length) lines.push(`add element ${t} ${name} { ${elementList(added)} }`);
        elements += gone.length + added.length;
      }
      wantedContents.set(table.name, contents);
      // Deletions go last (after the elements that referred to them changed).
      const wantedChains = new Set(table.chains.map((c) => c.name));
      const stale = [...known.chains.keys()].filter((n) => !wantedChains.has(n)).sort((a, b) => deleteOrder(a) - deleteOrder(b));
      for (const name of stale) deletes.push(`delete chain ${t} ${name}`);
      const wantedSets = new Set(table.sets.map((s) => s.name));
      for (const name of [...known.sets].filter((s) => !wantedSets.has(s))) deletes.push(`delete set ${t} ${name}`);
      for (const name of [...known.maps.keys()].filter((m) => !table.maps.has(m))) deletes.push(`delete map ${t} ${name}`);
      deleted += stale.length;
    }
    // Whole tables we no longer need (a shard without Services, or left by another layout).
    for (const name of [...this.known.keys()].filter((n) => !wantedTables.has(n))) deletes.push(`delete table ${this.family} ${name}`);

    const ruleset = [...lines, ...deletes];
    if (ruleset.length) {
      try {
        await this.nft(['-f', '-'], `${ruleset.join('\n')}\n`);
      } catch (err) {
        this.loaded = false;
        throw err;
      }
    }
    this.known.clear();
    for (const table of state.tables) {
      this.known.set(table.name, {
        chains: new Map(table.chains.map((c) => [c.name, c.hash])),
        sets: new Set(table.sets.map((s) => s.name)),
        maps: wantedContents.get(table.name)!,
      });
    }
    return { written: written.length, names: written, deleted, elements };
  }

  /** Deletes our tables (and with them everything the agent made in this family). */
  async cleanup(): Promise<number> {
    try {
      await this.load();
    } catch {
      return 0; // no nft on this node: nothing of ours to remove
    }
    const tables = [...this.known.keys()];
    for (const name of tables) await this.nft(['delete', 'table', this.family, name]);
    this.known.clear();
    this.loaded = false;
    return tables.length;
  }
}
