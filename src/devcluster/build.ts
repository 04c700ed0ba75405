// Builds etcd, kube-apiserver, kube-controller-manager, kubectl and kube-proxy from
// the published Go modules pinned in controlplane/go.mod, into a cache directory
// outside the repository keyed by version and by the module files, and reuses it.
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { logger } from '../log.ts';

const run = promisify(execFile);

export const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
export const CONTROLPLANE_MODULE_DIR = path.join(REPO_ROOT, 'controlplane');

/** Binary name -> Go package that builds it. */
const PACKAGES: Record<string, string> = {
  etcd: 'go.etcd.io/etcd/server/v3',
  'kube-apiserver': 'k8s.io/kubernetes/cmd/kube-apiserver',
  'kube-controller-manager': 'k8s.io/kubernetes/cmd/kube-controller-manager',
  kubectl: 'k8s.io/kubernetes/cmd/kubectl',
  'kube-proxy': 'k8s.io/kubernetes/cmd/kube-proxy',
};
export type ControlPlaneBinary = keyof typeof PACKAGES;
export const BINARIES = Object.keys(PACKAGES);

// Bump when the way binaries are built changes, so old cache entries are not reused.
const RECIPE = 'v1';
const MIN_GO = [1, 26];

export interface ControlPlaneBuild {
  kubernetesVersion: string;
  etcdVersion: string;
  binDir: string;
  bin(name: ControlPlaneBinary): string;
}

export function cacheRoot(): string {
  const base = process.env.EXTBACKEND_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), '.cache'), 'extbackend-operator');
  return path.resolve(base);
}

/**
 * Runs `build` for a cache entry unless it is complete, or another live process is
 * building it already (parallel test runs, a second checkout): then waits for that one.
 */
export async function buildOnce(entry: string, build: () => Promise<void>): Promise<void> {
  const lock = `${entry}.lock`;
  await mkdir(path.dirname(entry), { recursive: true });
  let waiting = false;
  for (;;) {
    if (existsSync(path.join(entry, 'complete'))) return;
    try {
      await mkdir(lock);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const owner = Number((await readFile(path.join(lock, 'pid'), 'utf8').catch(() => '')).trim());
      if (owner && isAlive(owner)) {
        if (!waiting) logger('build').info('another process is building this; waiting for it', { entry, pid: owner });
        waiting = true;
        await new Promise((r) => setTimeout(r, 2000));
      } else {
        await rm(lock, { recursive: true, force: true });
      }
      continue;
    }
    try {
      await writeFile(path.join(lock, 'pid'), `${process.pid}\n`);
      await build();
    } finally {
      await rm(lock, { recursive: true, force: true });
    }
    return;
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The versions pinned in controlplane/go.mod. */
export function pinnedVersions(goMod: string): { kubernetes: string; etcd: string } {
  const find = (module: string): string => {
    const m = new RegExp(`^\\s*${module.replaceAll('.', '\\.')}\\s+(v[0-9][^\\s]*)`, 'm').exec(goMod);
    if (!m?.[1]) throw new Error(`controlplane/go.mod does not require ${module}`);
    return m[1];
  };
  return { kubernetes: find('k8s.io/kubernetes'), etcd: find('go.etcd.io/etcd/server/v3') };
}

/** Version ldflags as Kubernetes' own build sets them (hack/lib/version.sh). */
export function versionLdflags(version: string, gitCommit: string, buildDate: string): string[] {
  const m = /^v(\d+)\.(\d+)\./.exec(version);
  if (!m) throw new Error(`not a Kubernetes release version: ${version}`);
  const vars = { gitVersion: version, gitMajor: m[1], gitMinor: m[2], gitCommit, gitTreeState: 'clean', buildDate };
  return ['k8s.io/component-base/version', 'k8s.io/client-go/pkg/version'].flatMap((pkg) =>
    Object.entries(vars).map(([k, v]) => `-X ${pkg}.${k}=${v}`),
  );
}

function binaries(binDir: string): (name: ControlPlaneBinary) => string {
  return (name) => path.join(binDir, name);
}

export async function goCommand(): Promise<string> {
  const candidates = ['go', '/usr/local/go/bin/go'];
  for (const go of candidates) {
    try {
      const { stdout } = await run(go, ['env', 'GOVERSION']);
      const m = /^go(\d+)\.(\d+)/.exec(stdout.trim());
      const [major = 0, minor = 0] = m ? [Number(m[1]), Number(m[2])] : [];
      if (major < MIN_GO[0]! || (major === MIN_GO[0] && minor < MIN_GO[1]!)) {
        throw new Error(
          `${go} is ${stdout.trim()}, but building the local control plane needs Go >= ${MIN_GO.join('.')} ` +
            `(k8s.io/kubernetes' go directive). Install Go ${MIN_GO.join('.')} or newer.`,
        );
      }
      return go;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  throw new Error(
    'No Go toolchain found (looked for `go` on PATH and /usr/local/go/bin/go). ' +
      `The local control plane (${BINARIES.join(', ')}) is built from controlplane/go.mod and needs Go >= ${MIN_GO.join('.')}. ` +
      'Install Go, or point KUBECONFIG at an existing cluster, or set EXTBACKEND_CONTROLPLANE_BIN to a directory holding those binaries.',
  );
}

/** Commit of the Kubernetes release, when the module proxy recorded one. */
export async function kubernetesCommit(go: string, version: string): Promise<string> {
  try {
    const { stdout } = await run(go, ['mod', 'download', '-json', `k8s.io/kubernetes@${version}`], { cwd: CONTROLPLANE_MODULE_DIR, env: goEnv() });
    const info = JSON.parse(stdout) as { Origin?: { Hash?: string } };
    return info.Origin?.Hash ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

export function goEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GOTOOLCHAIN: 'local', CGO_ENABLED: '0', GOFLAGS: '-mod=mod' };
}

/**
 * Returns the cached control plane, building it first when the cache has no entry
 * for the current controlplane/go.mod and go.sum. EXTBACKEND_CONTROLPLANE_BIN
 * overrides with a directory of prebuilt binaries.
 */
export async function ensureControlPlane(): Promise<ControlPlaneBuild> {
  const goMod = await readFile(path.join(CONTROLPLANE_MODULE_DIR, 'go.mod'), 'utf8');
  const goSum = await readFile(path.join(CONTROLPLANE_MODULE_DIR, 'go.sum'), 'utf8');
  const versions = pinnedVersions(goMod);
  const prebuilt = process.env.EXTBACKEND_CONTROLPLANE_BIN;
  if (prebuilt) {
    const binDir = path.resolve(prebuilt);
    const missing = BINARIES.filter((b) => !existsSync(path.join(binDir, b)));
    if (missing.length) throw new Error(`EXTBACKEND_CONTROLPLANE_BIN=${binDir} lacks ${missing.join(', ')}`);
    return { kubernetesVersion: versions.kubernetes, etcdVersion: versions.etcd, binDir, bin: binaries(binDir) };
  }

  const digest = createHash('sha256').update(RECIPE).update(goMod).update(goSum).digest('hex').slice(0, 12);
  const entry = path.join(cacheRoot(), 'controlplane', `k8s-${versions.kubernetes}-etcd-${versions.etcd}-${digest}`);
  const binDir = path.join(entry, 'bin');
  const result = { kubernetesVersion: versions.kubernetes, etcdVersion: versions.etcd, binDir, bin: binaries(binDir) };
  await buildOnce(entry, () => buildControlPlane(entry, versions));
  return result;
}

async function buildControlPlane(entry: string, versions: { kubernetes: string; etcd: string }): Promise<void> {
  const log = logger('controlplane-build');
  const go = await goCommand();
  log.info('building the local control plane (first time only; cached afterwards)', { into: entry, kubernetes: versions.kubernetes, etcd: versions.etcd });
  const started = Date.now();
  const staging = `${entry}.partial-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.join(staging, 'bin'), { recursive: true });
  const commit = await kubernetesCommit(go, versions.kubernetes);
  const ldflags = ['-s', '-w', ...versionLdflags(versions.kubernetes, commit, new Date().toISOString().replace(/\.\d+Z$/, 'Z'))];
  try {
    await run(go, ['build', '-trimpath', `-ldflags=${ldflags.join(' ')}`, '-o', path.join(staging, 'bin') + '/', ...Object.values(PACKAGES)], {
      cwd: CONTROLPLANE_MODULE_DIR,
      env: goEnv(),
      maxBuffer: 64 * 1024 * 1024,
    });
    // `go build` names the etcd binary after its module (go.etcd.io/etcd/server/v3 -> server).
    await rename(path.join(staging, 'bin', 'server'), path.join(staging, 'bin', 'etcd'));
  } catch (err) {
    await rm(staging, { recursive: true, force: true });
    const e = err as { stderr?: string; message: string };
    throw new Error(`building the control plane failed: ${e.stderr?.trim() || e.message}`);
  }
  const seconds = Math.round((Date.now() - started) / 1000);
  await writeFile(path.join(staging, 'complete'), JSON.stringify({ ...versions, commit, seconds }) + '\n');
  await rm(entry, { recursive: true, force: true });
  await rename(staging, entry);
  log.info('control plane built', { seconds, binDir: path.join(entry, 'bin') });
}
