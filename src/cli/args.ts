// A deliberately small argument parser: positionals, `--flag value`, `--flag=value`
// and boolean `--flag`. Each subcommand declares which flags it knows, so a typo is
// an error instead of being silently ignored.

export interface FlagSpec {
  /** Boolean flags take no value. */
  type: 'string' | 'boolean' | 'list';
  help: string;
  default?: string;
}

export type FlagSpecs = Record<string, FlagSpec>;

export interface ParsedArgs {
  positionals: string[];
  flags: Record<string, string | boolean | string[] | undefined>;
}

export class UsageError extends Error {}

export function parseArgs(argv: string[], specs: FlagSpecs): ParsedArgs {
  const positionals: string[] = [];
  const flags: ParsedArgs['flags'] = {};
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.type === 'list') flags[name] = spec.default ? spec.default.split(',') : [];
    else if (spec.default !== undefined) flags[name] = spec.type === 'boolean' ? spec.default === 'true' : spec.default;
  }
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--') {
      positionals.push(...argv.slice(i + 1));
      break;
    }
    if (!arg.startsWith('--')) {
      positionals.push(arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq === -1 ? undefined : eq);
    const spec = specs[name];
    if (!spec) throw new UsageError(`unknown flag --${name}`);
    if (spec.type === 'boolean') {
      flags[name] = eq === -1 ? true : ['true', '1', 'yes'].includes(arg.slice(eq + 1));
      continue;
    }
    const value = eq === -1 ? argv[++i] : arg.slice(eq + 1);
    if (value === undefined) throw new UsageError(`flag --${name} needs a value`);
    if (spec.type === 'list') flags[name] = value.split(',').map((v) => v.trim()).filter(Boolean);
    else flags[name] = value;
  }
  return { positionals, flags };
}

export function flagHelp(specs: FlagSpecs): string {
  return Object.entries(specs)
    .map(([name, s]) => `  --${name}${s.type === 'boolean' ? '' : ' VALUE'}\n      ${s.help}${s.default !== undefined ? ` (default ${s.default})` : ''}`)
    .join('\n');
}

export function stringFlag(args: ParsedArgs, name: string): string | undefined {
  const v = args.flags[name];
  return typeof v === 'string' ? v : undefined;
}

export function listFlag(args: ParsedArgs, name: string): string[] {
  const v = args.flags[name];
  return Array.isArray(v) ? v : [];
}

export function boolFlag(args: ParsedArgs, name: string): boolean {
  return args.flags[name] === true;
}

export function intFlag(args: ParsedArgs, name: string, min: number, max: number): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`--${name} must be an integer in ${min}..${max}, got "${v}"`);
  return n;
}

export function numberFlag(args: ParsedArgs, name: string, min: number, max: number): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) throw new UsageError(`--${name} must be a number in ${min}..${max}, got "${v}"`);
  return n;
}

/** Durations like 500ms, 30s, 5m, 1h; a bare number means seconds. */
export function durationFlag(args: ParsedArgs, name: string): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return undefined;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(v.trim());
  if (!m) throw new UsageError(`--${name} must be a duration like 500ms, 30s or 5m, got "${v}"`);
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? 's'] ?? 1000;
  return Number(m[1]) * unit;
}
