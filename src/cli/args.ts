// Flags for every subcommand, parsed by `node:util` parseArgs in strict mode: each
// subcommand declares which flags it knows, so a typo is an error instead of being
// silently ignored. This module adds what parseArgs leaves to us: help text, defaults
// for list flags, kube-style `--flag=false`, and typed readers (durations, bounded ints).
import { parseArgs as parseArgv } from 'node:util';

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

const TRUE = ['true', '1', 'yes'];

/** parseArgs rejects a value on a boolean (`--leader-elect=false`); our flags, like kube's, accept one: rewrite it to `--flag` / `--no-flag`. */
function booleanValuesAsNegation(argv: string[], specs: FlagSpecs): string[] {
  const end = argv.indexOf('--');
  return argv.map((arg, i) => {
    if ((end !== -1 && i >= end) || !arg.startsWith('--')) return arg;
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq);
    if (eq === -1 || specs[name]?.type !== 'boolean') return arg;
    return TRUE.includes(arg.slice(eq + 1)) ? `--${name}` : `--no-${name}`;
  });
}

/** parseArgs's own messages, shortened to what a user of this CLI needs. */
function usageMessage(err: Error & { code?: unknown }, specs: FlagSpecs): string {
  const flag = /'(-[^' ]+)/.exec(err.message)?.[1] ?? '';
  switch (err.code) {
    case 'ERR_PARSE_ARGS_UNKNOWN_OPTION':
      return `unknown flag ${flag}${flag.startsWith('--no-') && specs[flag.slice(5)] ? ' (only boolean flags have a --no- form)' : ''}`;
    case 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE':
      return `flag ${flag} needs a value (write ${flag}=VALUE for one that starts with -)`;
    default:
      return err.message;
  }
}

export function parseArgs(argv: string[], specs: FlagSpecs): ParsedArgs {
  const options = Object.fromEntries(Object.entries(specs).map(([name, spec]) => [name, { type: spec.type === 'boolean' ? ('boolean' as const) : ('string' as const) }]));
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgv({ args: booleanValuesAsNegation(argv, specs), options, strict: true, allowPositionals: true, allowNegative: true });
  } catch (err) {
    if (err instanceof Error && 'code' in err && String(err.code).startsWith('ERR_PARSE_ARGS')) throw new UsageError(usageMessage(err, specs));
    throw err;
  }
  const flags: ParsedArgs['flags'] = {};
  for (const [name, spec] of Object.entries(specs)) {
    const value = parsed.values[name] ?? spec.default;
    if (value === undefined) continue;
    if (spec.type === 'boolean') flags[name] = typeof value === 'boolean' ? value : TRUE.includes(value);
    else if (spec.type === 'list') flags[name] = String(value).split(',').map((v) => v.trim()).filter(Boolean);
    else flags[name] = String(value);
  }
  for (const [name, spec] of Object.entries(specs)) if (spec.type === 'list') flags[name] ??= [];
  return { positionals: parsed.positionals, flags };
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
  return rangedFlag(args, name, min, max, Number.isInteger, 'an integer');
}

export function numberFlag(args: ParsedArgs, name: string, min: number, max: number): number | undefined {
  return rangedFlag(args, name, min, max, Number.isFinite, 'a number');
}

function rangedFlag(args: ParsedArgs, name: string, min: number, max: number, valid: (n: number) => boolean, what: string): number | undefined {
  const v = stringFlag(args, name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!valid(n) || n < min || n > max) throw new UsageError(`--${name} must be ${what} in ${min}..${max}, got "${v}"`);
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
