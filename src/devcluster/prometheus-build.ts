// Builds promtool and Prometheus (for the monitoring tests) from the Go module pinned in
// prometheus/go.mod, into the cache next to the control plane, keyed by the module
// files; and fetches the monitoring.coreos.com CRDs from prometheus-operator's module.
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { logger } from '../log.ts';
import { REPO_ROOT, buildOnce, cacheRoot, goCommand, goEnv } from './build.ts';

const run = promisify(execFile);

export const PROMETHEUS_MODULE_DIR = path.join(REPO_ROOT, 'prometheus');
const PACKAGES = ['github.com/prometheus/prometheus/cmd/promtool', 'github.com/prometheus/prometheus/cmd/prometheus'];
// Bump when the way binaries are built changes, so old cache entries are not reused.
const RECIPE = 'v1';
/** The ServiceMonitor / PodMonitor / PrometheusRule CRDs come from this release's example/prometheus-operator-crd/. */
export const PROMETHEUS_OPERATOR_VERSION = 'v0.85.0';

export interface PrometheusBuild {
  version: string;
  promtool: string;
  prometheus: string;
}

function pinnedPrometheus(goMod: string): string {
  const m = /^\s*github\.com\/prometheus\/prometheus\s+(v[0-9][^\s]*)/m.exec(goMod);
  if (!m?.[1]) throw new Error('prometheus/go.mod does not require github.com/prometheus/prometheus');
  return m[1];
}

export async function ensurePrometheus(): Promise<PrometheusBuild> {
  const goMod = await readFile(path.join(PROMETHEUS_MODULE_DIR, 'go.mod'), 'utf8');
  const goSum = await readFile(path.join(PROMETHEUS_MODULE_DIR, 'go.sum'), 'utf8');
  const version = pinnedPrometheus(goMod);
  const digest = createHash('sha256').update(RECIPE).update(goMod).update(goSum).digest('hex').slice(0, 12);
  const entry = path.join(cacheRoot(), 'prometheus', `prometheus-${version}-${digest}`);
  await buildOnce(entry, () => buildPrometheus(entry, version));
  return { version, promtool: path.join(entry, 'bin', 'promtool'), prometheus: path.join(entry, 'bin', 'prometheus') };
}

async function buildPrometheus(entry: string, version: string): Promise<void> {
  const log = logger('prometheus-build');
  const go = await goCommand();
  log.info('building promtool and Prometheus (first time only; cached afterwards)', { into: entry, version });
  const started = Date.now();
  const staging = `${entry}.partial-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.join(staging, 'bin'), { recursive: true });
  try {
    // remove_all_sd: static targets are all the tests scrape; the cloud discoverers would double the build.
    await run(go, ['build', '-trimpath', '-tags', 'remove_all_sd', '-ldflags=-s -w', '-o', path.join(staging, 'bin') + '/', ...PACKAGES], {
      cwd: PROMETHEUS_MODULE_DIR,
      env: goEnv(),
      maxBuffer: 64 * 1024 * 1024,
    });
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    const e = err as { stderr?: string; message: string };
    throw new Error(`building promtool and Prometheus failed: ${e.stderr?.trim() || e.message}`);
  }
  const seconds = Math.round((Date.now() - started) / 1000);
  await writeFile(path.join(staging, 'complete'), JSON.stringify({ version, seconds }) + '\n');
  await rm(entry, { recursive: true, force: true });
  await rename(staging, entry);
  log.info('promtool and Prometheus built', { seconds });
}

/** The directory of prometheus-operator's CRD YAML, from its module in the Go module cache. */
export async function monitoringCrdDir(): Promise<string> {
  const go = await goCommand();
  const { stdout } = await run(go, ['mod', 'download', '-json', `github.com/prometheus-operator/prometheus-operator@${PROMETHEUS_OPERATOR_VERSION}`], {
    cwd: PROMETHEUS_MODULE_DIR,
    env: goEnv(),
    maxBuffer: 16 * 1024 * 1024,
  });
  const info = JSON.parse(stdout) as { Dir?: string; Error?: string };
  if (!info.Dir) throw new Error(`downloading prometheus-operator ${PROMETHEUS_OPERATOR_VERSION} failed: ${info.Error ?? stdout}`);
  return path.join(info.Dir, 'example', 'prometheus-operator-crd');
}

/**
 * Applies the prometheus-operator CRDs the monitoring component's kinds need, and waits
 * until they are served (the local overlay includes that component).
 */
export async function installMonitoringCrds(kubectl: (...args: string[]) => Promise<unknown>): Promise<void> {
  const crds = await monitoringCrdDir();
  const kinds = ['prometheusrules', 'servicemonitors', 'podmonitors'];
  for (const kind of kinds) await kubectl('apply', '--server-side', '-f', path.join(crds, `monitoring.coreos.com_${kind}.yaml`));
  for (const kind of kinds) await kubectl('wait', '--for=condition=Established', '--timeout=60s', `crd/${kind}.monitoring.coreos.com`);
}
