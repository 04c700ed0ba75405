// Builds what a real node of the local cluster runs, from published Go modules, into
// the same cache as the control plane: kubelet and kube-scheduler from the control
// plane's own module (same release, same build cache), containerd v2 and CoreDNS with
// `go install module@version` (each with its own go.mod, so their dependencies are
// exactly the releases'). runc and the CNI plugins come from Debian (.ci/install-packages).
import { createHash } from 'node:crypto';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { logger } from '../log.ts';
import { CONTROLPLANE_MODULE_DIR, buildOnce, cacheRoot, goCommand, goEnv, kubernetesCommit, pinnedVersions, versionLdflags } from './build.ts';

const run = promisify(execFile);

/** Releases pinned here; bump together with RECIPE's cache key (it hashes this file's pins). */
export const CONTAINERD_VERSION = 'v2.4.2';
export const COREDNS_VERSION = 'v1.15.0';

// containerd's snapshotters for btrfs, devmapper and zfs need C libraries; overlayfs and native need none.
const CONTAINERD_TAGS = 'no_btrfs,no_devmapper,no_zfs';

const RECIPE = 'v1';

export const NODE_BINARIES = ['kubelet', 'kube-scheduler', 'containerd', 'containerd-shim-runc-v2', 'ctr', 'coredns'] as const;
export type NodeBinary = (typeof NODE_BINARIES)[number];

export interface NodeBuild {
  binDir: string;
  bin(name: NodeBinary): string;
  /** Host tools the nodes use as they are: Debian's runc and CNI plugins. */
  runc: string;
  cniBinDir: string;
}

const RUNC = '/usr/sbin/runc';
const CNI_BIN_DIR = '/usr/lib/cni';

function checkHostTools(): void {
  const missing = [RUNC, path.join(CNI_BIN_DIR, 'bridge'), path.join(CNI_BIN_DIR, 'host-local'), path.join(CNI_BIN_DIR, 'loopback')].filter((f) => !existsSync(f));
  if (missing.length) throw new Error(`local nodes need Debian's runc and containernetworking-plugins (missing ${missing.join(', ')}): run .ci/install-packages`);
}

/** Returns the cached node binaries, building them first when the cache has none for these pins. */
export async function ensureNodeBinaries(): Promise<NodeBuild> {
  checkHostTools();
  const goMod = await readFile(path.join(CONTROLPLANE_MODULE_DIR, 'go.mod'), 'utf8');
  const goSum = await readFile(path.join(CONTROLPLANE_MODULE_DIR, 'go.sum'), 'utf8');
  const { kubernetes } = pinnedVersions(goMod);
  const digest = createHash('sha256').update(RECIPE).update(goMod).update(goSum).update(CONTAINERD_VERSION).update(COREDNS_VERSION).update(CONTAINERD_TAGS).digest('hex').slice(0, 12);
  const entry = path.join(cacheRoot(), 'nodes', `k8s-${kubernetes}-containerd-${CONTAINERD_VERSION}-coredns-${COREDNS_VERSION}-${digest}`);
  const binDir = path.join(entry, 'bin');
  const result: NodeBuild = { binDir, bin: (name) => path.join(binDir, name), runc: RUNC, cniBinDir: CNI_BIN_DIR };
  await buildOnce(entry, () => buildNodeBinaries(entry, kubernetes));
  return result;
}

async function buildNodeBinaries(entry: string, kubernetes: string): Promise<void> {
  const log = logger('node-build');
  const go = await goCommand();
  log.info('building the local nodes\' binaries (first time only; cached afterwards)', { into: entry, kubernetes, containerd: CONTAINERD_VERSION, coredns: COREDNS_VERSION });
  const staging = `${entry}.partial-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(path.join(staging, 'bin'), { recursive: true });
  const out = path.join(staging, 'bin') + '/';
  const timings: Record<string, number> = {};
  const step = async (name: string, args: string[], options: { cwd?: string; env?: NodeJS.ProcessEnv }): Promise<void> => {
    const started = Date.now();
    try {
      await run(go, args, { maxBuffer: 64 * 1024 * 1024, ...options });
    } catch (err) {
      await rm(staging, { recursive: true, force: true });
      const e = err as { stderr?: string; message: string };
      throw new Error(`building ${name} failed: ${e.stderr?.trim() || e.message}`);
    }
    timings[name] = Math.round((Date.now() - started) / 1000);
  };

  const commit = await kubernetesCommit(go, kubernetes);
  const ldflags = ['-s', '-w', ...versionLdflags(kubernetes, commit, new Date().toISOString().replace(/\.\d+Z$/, 'Z'))].join(' ');
  await step('kubelet, kube-scheduler', ['build', '-trimpath', `-ldflags=${ldflags}`, '-o', out, 'k8s.io/kubernetes/cmd/kubelet', 'k8s.io/kubernetes/cmd/kube-scheduler'], {
    cwd: CONTROLPLANE_MODULE_DIR,
    env: goEnv(),
  });
  // `go install m@v` builds with the module's own go.mod; outside any module, so no local go.mod interferes.
  const installEnv = { ...goEnv(), GOBIN: out, GOFLAGS: '' };
  const containerdLdflags = `-s -w -X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}`;
  await step(
    'containerd',
    ['install', '-trimpath', `-tags=${CONTAINERD_TAGS}`, `-ldflags=${containerdLdflags}`, ...['containerd', 'containerd-shim-runc-v2', 'ctr'].map((c) => `github.com/containerd/containerd/v2/cmd/${c}@${CONTAINERD_VERSION}`)],
    { cwd: staging, env: installEnv },
  );
  await step('coredns', ['install', '-trimpath', '-ldflags=-s -w', `github.com/coredns/coredns@${COREDNS_VERSION}`], { cwd: staging, env: installEnv });

  await writeFile(path.join(staging, 'complete'), JSON.stringify({ kubernetes, containerd: CONTAINERD_VERSION, coredns: COREDNS_VERSION, seconds: timings }) + '\n');
  await rm(entry, { recursive: true, force: true });
  await rename(staging, entry);
  log.info('node binaries built', { seconds: timings, binDir: path.join(entry, 'bin') });
}
