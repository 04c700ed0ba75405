// The monitoring component as the tests use it: its rules rendered for promtool and for a
// real Prometheus, its dashboard's queries, the metric names PromQL refers to, and a
// Prometheus (built from its Go module, src/devcluster/prometheus-build.ts) on loopback.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import type { ExecutionContext } from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { waitFor } from './cluster.ts';

export const COMPONENT_DIR = path.join(REPO_ROOT, 'config', 'components', 'monitoring');

export interface AlertRule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
export interface RuleGroup {
  name: string;
  interval?: string;
  rules: AlertRule[];
}

export async function ruleGroups(): Promise<RuleGroup[]> {
  const rule = k8s.loadYaml<{ kind: string; spec: { groups: RuleGroup[] } }>(await readFile(path.join(COMPONENT_DIR, 'prometheusrule.yaml'), 'utf8'));
  return rule.spec.groups;
}

/**
 * A Prometheus rule file of the PrometheusRule's groups. `forDuration` replaces every
 * `for:` (the live test uses 0s, so an alert fires on the first evaluation that sees the
 * condition instead of minutes later); `annotations: false` drops annotations, which
 * promtool's unit tests would otherwise have to repeat verbatim.
 */
export function renderRules(groups: RuleGroup[], options: { forDuration?: string; annotations?: boolean; interval?: string } = {}): string {
  const rendered = groups.map((g) => ({
    ...g,
    ...(options.interval ? { interval: options.interval } : {}),
    rules: g.rules.map(({ annotations, ...rule }) => ({
      ...rule,
      ...(options.forDuration !== undefined && rule.for !== undefined ? { for: options.forDuration } : {}),
      ...(options.annotations === false || !annotations ? {} : { annotations }),
    })),
  }));
  return k8s.dumpYaml({ groups: rendered });
}

interface DashboardPanel {
  title?: string;
  targets?: { expr?: string }[];
  panels?: DashboardPanel[];
}

/** Every PromQL query of the dashboard (panels and templating), with Grafana's variables filled in. */
export async function dashboardQueries(): Promise<{ where: string; expr: string }[]> {
  const dashboard = JSON.parse(await readFile(path.join(COMPONENT_DIR, 'extbackend-dashboard.json'), 'utf8')) as {
    panels: DashboardPanel[];
    templating: { list: { name: string; query?: string | { query: string } }[] };
  };
  const out: { where: string; expr: string }[] = [];
  const walk = (panels: DashboardPanel[]): void => {
    for (const p of panels) {
      for (const t of p.targets ?? []) if (t.expr) out.push({ where: `panel "${p.title}"`, expr: t.expr });
      walk(p.panels ?? []);
    }
  };
  walk(dashboard.panels);
  for (const v of dashboard.templating.list) {
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    // label_values(metric, label) is Grafana's, not PromQL: the metric is what must exist.
    const m = q ? /^label_values\((\w+),/.exec(q) : null;
    if (m) out.push({ where: `variable $${v.name}`, expr: m[1]! });
  }
  return out.map((q) => ({ ...q, expr: q.expr.replaceAll('$__rate_interval', '1m').replaceAll('$namespace', '.*') }));
}

const PROMQL_WORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'and', 'or', 'unless', 'offset', 'inf', 'nan']);

/**
 * The metric names a PromQL expression selects: identifiers that are not functions,
 * keywords, label names in by/on lists or matchers, strings or durations. A deliberately
 * small extractor (promtool has no "list selectors" command); the test runs every
 * expression through Prometheus too, so a name it missed would still have to parse.
 */
export function promqlMetricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, '""') // strings
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // ranges
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' '); // label lists
  const names = new Set<string>();
  for (const m of stripped.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const word = m[0];
    const after = stripped.slice(m.index + word.length).trimStart();
    if (after.startsWith('(') || PROMQL_WORDS.has(word.toLowerCase())) continue;
    names.add(word);
  }
  return [...names];
}

/** Metric names in a /metrics text: each family's samples, a histogram's _bucket/_sum/_count too. */
export function exportedNames(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)/.exec(line);
    if (type) {
      names.add(type[1]!);
      if (type[2] === 'histogram' || type[2] === 'summary') for (const s of ['_bucket', '_sum', '_count']) names.add(`${type[1]}${s}`);
      continue;
    }
    const sample = /^([A-Za-z_:][A-Za-z0-9_:]*)[{ ]/.exec(line);
    if (sample) names.add(sample[1]!);
  }
  return names;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

export interface RunningPrometheus {
  url: string;
  query<T = unknown>(path: string): Promise<T>;
}

/** Prometheus on loopback with `config` (YAML) and `rules`, stopped at teardown. */
export async function startPrometheus(t: ExecutionContext, binary: string, config: (rulesFile: string) => string, rules: string): Promise<RunningPrometheus> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'xb-prometheus-'));
  const rulesFile = path.join(dir, 'rules.yaml');
  await writeFile(rulesFile, rules);
  await writeFile(path.join(dir, 'prometheus.yml'), config(rulesFile));
  const port = await freePort();
  const child = spawn(binary, [`--config.file=${path.join(dir, 'prometheus.yml')}`, `--storage.tsdb.path=${path.join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const keep = (d: Buffer): void => void (output = (output + d.toString()).slice(-8192));
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
    if (!t.passed) console.error(`prometheus output:\n${output}`);
  });
  const url = `http://127.0.0.1:${port}`;
  await waitFor('Prometheus to be ready', async () => {
    if (child.exitCode !== null) throw new Error(`prometheus exited (${child.exitCode}): ${output}`);
    return (await fetch(`${url}/-/ready`).catch(() => undefined))?.ok ?? false;
  }, { timeoutMs: 30_000, intervalMs: 200 });
  return {
    url,
    query: async <T>(p: string): Promise<T> => {
      const res = await fetch(`${url}${p}`);
      const body = (await res.json()) as { status: string; data: T; error?: string };
      if (body.status !== 'success') throw new Error(`${p}: ${body.error ?? res.status}`);
      return body.data;
    },
  };
}
