// Applies rendered chains with one atomic `iptables-restore --noflush` per family and
// sync: only chains whose content hash differs from what is in the kernel are
// rewritten, chains we no longer need are deleted, nothing that is not ours (prefix
// XB-) is touched. The kernel is the source of truth: a full sync re-reads it.
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

/** Our chains in the kernel now, with the content hash each was written with. */
export function parseSaved(saved: string, table: Table): Map<string, string | undefined> {
  const chains = new Map<string, string | undefined>();
  const firstRuleSeen = new Set<string>();
  let current = '';
  for (const line of saved.split('\n')) {
    if (line.startsWith('*')) current = line.slice(1);
    if (current !== table) continue;
    const decl = /^:(\S+) /.exec(line);
    if (decl?.[1]?.startsWith(CHAIN_PREFIX)) chains.set(decl[1], undefined);
    // The hash is on a chain's first rule; iptables-save may print addresses and protocol before it.
    const rule = /^-A (\S+) /.exec(line);
    const chain = rule?.[1];
    if (!chain?.startsWith(CHAIN_PREFIX) || firstRuleSeen.has(chain)) continue;
    firstRuleSeen.add(chain);
    const hash = /-m comment --comment "?xb-hash:([0-9a-f]+)"?/.exec(line);
    if (hash) chains.set(chain, hash[1]);
  }
  return chains;
}

export interface ApplyResult {
  written: number;
  deleted: number;
  /** Rules in the chains written. */
  rules: number;
}

export class IptablesApplier {
  private readonly cmd: IptablesCommands;
  /** Per table, chain -> hash in the kernel, as far as we know. */
  private known: Record<Table, Map<string, string | undefined>> = { nat: new Map(), filter: new Map() };
  private loaded = false;

  constructor(family: 4 | 6) {
    this.cmd = commandsFor(family);
  }

  private exec(command: string, args: string[], input?: string): Promise<string> {
    return runTool(command, args, input);
  }

  /** Reads what our chains hold now (after a restart, or to verify on a full sync). */
  async load(): Promise<void> {
    for (const table of ['nat', 'filter'] as const) this.known[table] = parseSaved(await this.exec(this.cmd.save, ['-t', table]), table);
    this.loaded = true;
  }

  /** Writes what differs. `full` re-reads the kernel first, so anything changed behind our back is repaired. */
  async apply(chains: Chain[], full: boolean): Promise<ApplyResult> {
    if (full || !this.loaded) await this.load();
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
      for (const c of write) this.known[c.table].set(c.name, c.hash);
      for (const r of remove) this.known[r.table].delete(r.name);
    }
    // With iptables-nft every iptables call reads the whole ruleset: check the hooks on
    // full syncs only (the first sync is full; the periodic one repairs removed hooks).
    if (full) await this.ensureHooks();
    return { written: write.length, deleted: remove.length, rules: write.reduce((n, c) => n + c.rules.length, 0) };
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
    return removed + ours.length;
  }
}

/** Splits a rule spec on spaces, keeping quoted comments together. */
export function splitRule(spec: string): string[] {
  return [...spec.matchAll(/"([^"]*)"|(\S+)/g)].map((m) => m[1] ?? m[2]!);
}
