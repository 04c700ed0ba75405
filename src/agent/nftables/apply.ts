// Applies an NftState with one `nft -f` transaction per family and sync. What the
// kernel holds is learned cheaply: `nft -t list ruleset` prints table, chain, set and
// map names and every chain's rules, but no map elements (listing elements is slow in
// nft 1.0.6: ~30 µs each even as JSON, seconds at 10 000 Services).
// Service chains carry their content hash in their name, so an existing one is right
// when it still holds as many rules as we wrote, and the same rules as the last time we
// looked; fixed chains are rewritten when their hash differs from what we last wrote
// (always on a full sync). Map elements are diffed against what we last wrote. A map
// whose elements we do not know (after a restart, a failed apply, or when a check found
// them changed behind our back) is flushed and refilled inside the same transaction
// (atomic: no packet sees it empty). Each full sync also compares the elements of some
// tables with the kernel's (`nft -j list table`), in turn, at most ELEMENT_CHECK_BUDGET
// elements a sync: every table on a small node, all of them within a few sync periods at
// 10 000 Services, without paying a whole refill every period. Only our tables are ever
// touched.
import { runTool } from '../../net/system-command.ts';
import { MapContent } from './map-content.ts';
import { isOurTable, type NftChain, type NftElement, type NftState } from './render.ts';

/** What we know a table holds: chain name -> hash we wrote (undefined: content unknown); sets; maps with their elements (undefined: unknown). */
interface KnownTable {
  chains: Map<string, string | undefined>;
  sets: Set<string>;
  maps: Map<string, MapContent | undefined>;
}

const elementList = (added: NftElement[]): string => added.map(([k, v]) => `${k} : ${v}`).join(', ');

/** Our tables as `nft -t list ruleset` prints them: chains with their rules (counters left out), set and map names. */
export interface ListedTable {
  chains: Map<string, string[]>;
  sets: Set<string>;
  maps: Set<string>;
}

/** `nft -t list ruleset <family>` output -> our tables. */
export function parseRuleset(text: string): Map<string, ListedTable> {
  const tables = new Map<string, ListedTable>();
  let table: ListedTable | undefined;
  let rules: string[] | undefined;
  for (const line of text.split('\n')) {
    const t = /^table \S+ (\S+) \{/.exec(line);
    if (t) {
      table = isOurTable(t[1]!) ? { chains: new Map(), sets: new Set(), maps: new Set() } : undefined;
      if (table) tables.set(t[1]!, table);
      rules = undefined;
      continue;
    }
    if (!table) continue;
    const item = /^\t(chain|set|map) (\S+) \{/.exec(line);
    if (item) {
      const [, kind, name] = item as unknown as [string, 'chain' | 'set' | 'map', string];
      rules = undefined;
      if (kind === 'chain') table.chains.set(name, (rules = []));
      else if (kind === 'set') table.sets.add(name);
      else table.maps.add(name);
      continue;
    }
    if (line.startsWith('\t}')) rules = undefined;
    // A base chain's first line is its hook ("type nat hook ... policy accept;"), not a rule.
    else if (rules && line.startsWith('\t\t') && !/^\t\ttype .*;$/.test(line)) rules.push(line.trim().replace(/^counter packets \d+ bytes \d+ ?/, ''));
  }
  return tables;
}

/** The elements of each map, per table, from `nft -j list table|ruleset`, as key and value text the way we render them. */
export function parseTableElements(json: string): Map<string, Map<string, Map<string, string>>> {
  type Value = string | number | { concat: Value[] } | { goto: { target: string } } | { jump: { target: string } } | { prefix: { addr: string; len: number } };
  const text = (v: Value): string => {
    if (typeof v !== 'object') return String(v);
    if ('concat' in v) return v.concat.map(text).join(' . ');
    if ('goto' in v) return `goto ${v.goto.target}`;
    if ('jump' in v) return `jump ${v.jump.target}`;
    return JSON.stringify(v); // nothing we write: never equal to ours
  };
  const tables = new Map<string, Map<string, Map<string, string>>>();
  for (const item of (JSON.parse(json) as { nftables: { map?: { table: string; name: string; elem?: [Value, Value][] } }[] }).nftables) {
    if (!item.map) continue;
    let maps = tables.get(item.map.table);
    if (!maps) tables.set(item.map.table, (maps = new Map<string, Map<string, string>>()));
    maps.set(item.map.name, new Map((item.map.elem ?? []).map(([k, v]) => [text(k), text(v)])));
  }
  return tables;
}

/**
 * Elements compared with the kernel per full sync and family: listing costs nft 1.0.6
 * ~70 µs an element on a busy 2-core machine (~0.35 s for 5 000). Every map of a node
 * with up to ~450 Services (10 endpoints each) is checked on each full sync; at 10 000
 * Services all are within 22 full syncs.
 */
export const ELEMENT_CHECK_BUDGET = 5_000;

/** nft's answer for a table that does not exist (ENOENT from the kernel). */
export const isNoSuchTable = (err: unknown): boolean => /No such file or directory/.test((err as Error).message) && (err as { code?: unknown }).code !== 'ENOENT';

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
  /** Chains and maps a full sync found changed behind our back (and rewrote). */
  drifted: number;
}

export class NftablesApplier {
  private readonly family: 'ip' | 'ip6';
  private readonly nft: NftRunner;
  private known = new Map<string, KnownTable>();
  private loaded = false;
  /** What the last full read listed, until the next apply has checked the chains it wants against it. */
  private listed: Map<string, ListedTable> | undefined;
  /** "table chain" -> the hash we wrote it with and its rules as printed when last checked (undefined: not read since written). */
  private checkedRules = new Map<string, { hash: string; text: string | undefined }>();
  /** Where the next element check starts, in the sorted list of our tables. */
  private elementCursor = 0;
  private drifted = 0;

  constructor(family: 'ip' | 'ip6', nft: NftRunner = systemNft) {
    this.family = family;
    this.nft = nft;
  }

  /** Everything in our tables now but map elements (after a restart, or to verify on a full sync); some tables' elements too. */
  private async load(): Promise<void> {
    // What we wrote is still what a map holds if the last apply succeeded, the map is still there, and a check does not say otherwise.
    const previous = this.loaded ? this.known : new Map<string, KnownTable>();
    this.known = new Map();
    const listed = parseRuleset(await this.nft(['-t', 'list', 'ruleset', this.family]));
    for (const [table, l] of listed) {
      const before = previous.get(table)?.maps;
      this.known.set(table, { chains: new Map([...l.chains.keys()].map((n) => [n, undefined])), sets: new Set(l.sets), maps: new Map([...l.maps].map((n) => [n, before?.get(n)])) });
    }
    this.listed = listed;
    this.loaded = true;
    await this.checkElements();
  }

  /** Compares the elements of the next tables in turn (up to ELEMENT_CHECK_BUDGET) with the kernel's; a map that differs is refilled. */
  private async checkElements(): Promise<void> {
    const size = (t: KnownTable): number => [...t.maps.values()].reduce((n, m) => n + (m?.size ?? 0), 0);
    const names = [...this.known.keys()].sort();
    const picked: string[] = [];
    let spent = 0;
    for (const [i] of names.entries()) {
      const name = names[(this.elementCursor + i) % names.length]!;
      const elements = size(this.known.get(name)!);
      if (picked.length && spent + elements > ELEMENT_CHECK_BUDGET) break;
      spent += elements;
      picked.push(name);
    }
    this.elementCursor = names.length ? (this.elementCursor + picked.length) % names.length : 0;
    const withContent = picked.filter((name) => [...this.known.get(name)!.maps.values()].some((m) => m));
    if (!withContent.length) return;
    // Every table at once is one nft process (a small node); else one per table.
    const listings = picked.length === names.length ? [await this.nft(['-j', 'list', 'ruleset', this.family])] : await Promise.all(withContent.map((name) => this.nft(['-j', 'list', 'table', this.family, name])));
    const kernel = new Map<string, Map<string, Map<string, string>>>();
    for (const listing of listings) for (const [table, maps] of parseTableElements(listing)) kernel.set(table, maps);
    for (const name of withContent) {
      const table = this.known.get(name)!;
      for (const [map, content] of table.maps) {
        if (!content || content.matches(kernel.get(name)?.get(map) ?? new Map())) continue;
        table.maps.set(map, undefined);
        this.drifted++;
      }
    }
  }

  /**
   * True when a chain in the kernel holds `c`'s rules: as many as we wrote, printed as
   * they were when last checked. The printed form is learned on the first full read
   * after we wrote the chain, or, for a versioned chain (its name says its content), on
   * the first read at all.
   */
  private holdsRules(table: string, c: NftChain, rules: string[]): boolean {
    const key = `${table} ${c.name}`;
    const text = rules.join('\n');
    const last = this.checkedRules.get(key);
    const mine = last?.hash === c.hash ? last : undefined; // what we wrote it with, if it is what we want now
    const trusted = mine?.text !== undefined ? mine.text === text : mine !== undefined || c.versioned;
    if (rules.length !== c.rules.length || !trusted) {
      this.checkedRules.delete(key);
      return false;
    }
    this.checkedRules.set(key, { hash: c.hash, text });
    return true;
  }

  async apply(state: NftState, full: boolean): Promise<NftApplyResult> {
    this.drifted = 0;
    if (full || !this.loaded) await this.load();
    if (this.listed) {
      for (const table of state.tables) {
        const inKernel = this.listed.get(table.name);
        const known = this.known.get(table.name);
        if (!inKernel || !known) continue;
        for (const c of table.chains) {
          const rules = inKernel.chains.get(c.name);
          if (!rules) continue;
          // Ours with this content (by name, or by what we wrote), yet not holding it: changed behind our back.
          const oursAsWanted = c.versioned || this.checkedRules.get(`${table.name} ${c.name}`)?.hash === c.hash;
          if (this.holdsRules(table.name, c, rules)) known.chains.set(c.name, c.hash);
          else if (oursAsWanted) this.drifted++;
        }
      }
      this.listed = undefined;
    }
    const lines: string[] = [];
    const deletes: string[] = [];
    const written: string[] = [];
    const rewritten = new Set<string>();
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
      const write = table.chains.filter((c) => known.chains.get(c.name) !== c.hash);
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
          rewritten.add(`${table.name} ${c.name}`);
        }
        lines.push('}');
      }
      const contents = new Map<string, MapContent>();
      for (const [name, m] of table.maps) {
        let content = known.maps.get(name);
        if (!content) {
          // Unknown content (after a restart, a failed apply, or changed behind our back): refill, atomically.
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
    // Only chains we still want are remembered (versioned names come and go with their content).
    const checked = new Map<string, { hash: string; text: string | undefined }>();
    for (const table of state.tables) {
      for (const c of table.chains) {
        const key = `${table.name} ${c.name}`;
        const last = this.checkedRules.get(key);
        checked.set(key, last?.hash === c.hash && !rewritten.has(key) ? last : { hash: c.hash, text: undefined });
      }
    }
    this.checkedRules = checked;
    this.known.clear();
    for (const table of state.tables) {
      this.known.set(table.name, {
        chains: new Map(table.chains.map((c) => [c.name, c.hash])),
        sets: new Set(table.sets.map((s) => s.name)),
        maps: wantedContents.get(table.name)!,
      });
    }
    return { written: written.length, names: written, deleted, elements, drifted: this.drifted };
  }

  /**
   * Deletes our tables (and with them everything the agent made in this family). A table
   * gone meanwhile is nothing to do; any other failure (not root, no nft) is an error
   * for the caller to report: "nothing removed" must mean nothing was there.
   */
  async cleanup(): Promise<number> {
    const tables = [...parseRuleset(await this.nft(['-t', 'list', 'ruleset', this.family])).keys()];
    let removed = 0;
    for (const name of tables) {
      try {
        await this.nft(['delete', 'table', this.family, name]);
        removed++;
      } catch (err) {
        if (!isNoSuchTable(err)) throw err;
      }
    }
    this.known.clear();
    this.loaded = false;
    return removed;
  }
}
