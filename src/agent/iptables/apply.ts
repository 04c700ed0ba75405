// Applies rendered chains with one atomic `iptables-restore --noflush` per family and
// sync: only chains whose content hash differs from what is in the kernel are
// rewritten, chains we no longer need are deleted, nothing that is not ours (prefix
// XB-) is touched. The kernel is the source of truth: a full sync re-reads it and
// compares every rule of every chain of ours with what we render (a chain that lost one
// rule still carries its first, hash-carrying one), so partial drift is repaired too.
import { runTool } from '../../net/system-command.ts';
import { CHAIN_PREFIX, HOOKS, restoreInput, type Chain, type Table } from './render.ts';


export interface IptablesCommands {
  save: string;
  restore: string;
  iptables: string;
}

export function commandsFor(family: 4 | 6): IptablesCommands {
  const v = family === 4 ? '' : '6';
  return { save: `ip${v}tables-save`, restore: `ip${v}tables-restore`, iptables: `ip${v}tables` };
}

/** One of our chains as `iptables-save` prints it: the hash its first rule carries and its rules (without "-A NAME "). */
export interface SavedChain {
  hash: string | undefined;
  rules: string[];
}

/** Our chains in the kernel now, with the content hash each was written with and the rules they hold. */
export function parseSaved(saved: string, table: Table): Map<string, SavedChain> {
  const chains = new Map<string, SavedChain>();
  let current = '';
  for (const line of saved.split('\n')) {
    if (line.startsWith('*')) current = line.slice(1);
    if (current !== table) continue;
    if (line.startsWith(':')) {
      const name = line.slice(1, line.indexOf(' '));
      if (name.startsWith(CHAIN_PREFIX)) chains.set(name, { hash: undefined, rules: [] });
      continue;
    }
    if (!line.startsWith(`-A ${CHAIN_PREFIX}`)) continue;
    const name = line.slice(3, line.indexOf(' ', 3));
    const chain = chains.get(name);
    if (!chain) continue;
    // The hash is on a chain's first rule; iptables-save may print addresses and protocol before it.
    if (!chain.rules.length) chain.hash = /-m comment --comment "?xb-hash:([0-9a-f]+)"?/.exec(line)?.[1];
    chain.rules.push(line.slice(name.length + 4));
  }
  return chains;
}

/**
 * A rule as a comparable text, the same for what we render and what iptables-save prints
 * back: save reorders matches and options (`-p tcp` before a comment, `--rcheck` before
 * `--name`), spells `--or-mark M` as `--set-xmark M/M`, quantizes a probability to 1/2^31
 * and names REJECT's default. Sorting the tokens absorbs the reordering; any rule edit
 * (another address, port, target) still changes a token.
 */
export function canonicalRule(rule: string): string {
  const tokens = splitRule(rule);
  const out: string[] = [];
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i]!;
    const next = tokens[i + 1];
    if (token === '--or-mark' && next !== undefined) {
      out.push('--set-xmark', `${next}/${next}`);
      i++;
    } else if (token === '--xor-mark' && next !== undefined) {
      out.push('--set-xmark', `${next}/0x0`);
      i++;
    } else if (token === '--probability' && next !== undefined) {
      out.push(token, String(Math.round(Number(next) * 2 ** 31)));
      i++;
    } else if (token === '--reject-with' && (next === 'icmp-port-unreachable' || next === 'icmp6-port-unreachable')) {
      i++;
    } else {
      out.push(token);
    }
  }
  return out.sort().join(' ');
}

// Rendered chains are reused between syncs while their port is unchanged: canonicalize each once.
const canonicalRendered = new WeakMap<Chain, string[]>();

/** True when the kernel's rules are the chain's rules. */
export function holdsRules(chain: Chain, saved: SavedChain): boolean {
  if (saved.hash !== chain.hash || saved.rules.length !== chain.rules.length) return false;
  let want = canonicalRendered.get(chain);
  if (!want) canonicalRendered.set(chain, (want = chain.rules.map(canonicalRule)));
  return saved.rules.every((r, i) => canonicalRule(r) === want[i]);
}

/** Runs a tool with these arguments (and stdin); tests pass one that runs it in a namespace. */
export type ToolRunner = (command: string, args: string[], input?: string) => Promise<string>;

export interface ApplyResult {
  written: number;
  /** Chains of ours a full sync found changed behind our back (and rewrote). */
  drifted: number;
  deleted: number;
  /** Rules in the chains written. */
  rules: number;
}

export class IptablesApplier {
  private readonly cmd: IptablesCommands;
  /** Per table, chain -> hash in the kernel, as far as we know (undefined: content unknown or wrong). */
  private known: Record<Table, Map<string, string | undefined>> = { nat: new Map(), filter: new Map() };
  private loaded = false;
  /** What the last read of the kernel found, until the next apply has checked it against the chains it wants. */
  private saved: Record<Table, Map<string, SavedChain>> | undefined;
  /**
   * Per table, chain -> its rules as iptables-save printed them when they last matched what
   * we render: on a full sync an unchanged chain is then one string comparison, and only
   * chains whose printed rules changed are compared rule by rule.
   */
  private verified: Record<Table, Map<string, { hash: string; text: string }>> = { nat: new Map(), filter: new Map() };

  private readonly exec: ToolRunner;

  constructor(family: 4 | 6, run: ToolRunner = runTool) {
    this.cmd = commandsFor(family);
    this.exec = run;
  }

  /** Reads what our chains hold now (after a restart, or to verify on a full sync). */
  async load(): Promise<void> {
    const saved = { nat: new Map<string, SavedChain>(), filter: new Map<string, SavedChain>() };
    for (const table of ['nat', 'filter'] as const) {
      saved[table] = parseSaved(await this.exec(this.cmd.save, ['-t', table]), table);
      // Nothing is known right until checked against what we want (apply does).
      this.known[table] = new Map([...saved[table].keys()].map((name) => [name, undefined]));
    }
    this.saved = saved;
    this.loaded = true;
  }

  /** True when the kernel's chain holds every rule of `chain`, in order, and nothing else. */
  private kernelHolds(chain: Chain, saved: SavedChain): boolean {
    const verified = this.verified[chain.table];
    const text = saved.rules.join('\n');
    const last = verified.get(chain.name);
    if (last?.hash === chain.hash && last.text === text) return true;
    if (!holdsRules(chain, saved)) {
      verified.delete(chain.name);
      return false;
    }
    verified.set(chain.name, { hash: chain.hash, text });
    return true;
  }

  /** Writes what differs. `full` re-reads the kernel first and compares every rule, so anything changed behind our back is repaired. */
  async apply(chains: Chain[], full: boolean): Promise<ApplyResult> {
    if (full || !this.loaded) await this.load();
    let drifted = 0;
    if (this.saved) {
      for (const c of chains) {
        const inKernel = this.saved[c.table].get(c.name);
        if (!inKernel) continue;
        if (this.kernelHolds(c, inKernel)) this.known[c.table].set(c.name, c.hash);
        // Written with this content (or its first rule is gone), and not holding it now: changed behind our back.
        else if (inKernel.hash === c.hash || inKernel.hash === undefined) drifted++;
      }
      this.saved = undefined;
    }
    const write = chains.filter((c) => this.known[c.table].get(c.name) !== c.hash);
    const wanted = { nat: new Set<string>(), filter: new Set<string>() };
    for (const c of chains) wanted[c.table].add(c.name);
    const remove = (['nat', 'filter'] as const).flatMap((table) => [...this.known[table].keys()].filter((name) => !wanted[table].has(name)).map((name) => ({ table, name })));
    const input = restoreInput(write, remove);
    if (input) {
      try {
        await this.exec(this.cmd.restore, ['--noflush', '-w', '5'], input);
      } catch (err) {
        this.loaded = false; // unknown state now: the next sync re-reads the kernel
        throw err;
      }
      for (const c of write) {
        this.known[c.table].set(c.name, c.hash);
        this.verified[c.table].delete(c.name); // how iptables-save prints it: learned on the next full sync
      }
      for (const r of remove) {
        this.known[r.table].delete(r.name);
        this.verified[r.table].delete(r.name);
      }
    }
    // With iptables-nft every iptables call reads the whole ruleset: check the hooks on
    // full syncs only (the first sync is full; the periodic one repairs removed hooks).
    if (full) await this.ensureHooks();
    return { written: write.length, drifted, deleted: remove.length, rules: write.reduce((n, c) => n + c.rules.length, 0) };
  }

  private async ensureHooks(): Promise<void> {
    for (const [table, chain, spec] of HOOKS) {
      const args = splitRule(spec);
      try {
        await this.exec(this.cmd.iptables, ['-w', '5', '-t', table, '-C', chain, ...args]);
      } catch {
        await this.exec(this.cmd.iptables, ['-w', '5', '-t', table, '-I', chain, '1', ...args]);
      }
    }
  }

  /** Removes every hook and chain of ours (`extbackend agent --cleanup`). */
  async cleanup(): Promise<number> {
    let removed = 0;
    for (const [table, chain, spec] of HOOKS) {
      const args = splitRule(spec);
      for (;;) {
        try {
          await this.exec(this.cmd.iptables, ['-w', '5', '-t', table, '-D', chain, ...args]);
          removed++;
        } catch {
          break;
        }
      }
    }
    await this.load();
    const ours = (['nat', 'filter'] as const).flatMap((table) => [...this.known[table].keys()].map((name) => ({ table, name })));
    const input = restoreInput([], ours);
    if (input) await this.exec(this.cmd.restore, ['--noflush', '-w', '5'], input);
    this.known = { nat: new Map(), filter: new Map() };
    this.verified = { nat: new Map(), filter: new Map() };
    this.saved = undefined;
    return removed + ours.length;
  }
}

/** Splits a rule spec on spaces, keeping quoted comments together. */
export function splitRule(spec: string): string[] {
  return [...spec.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}
