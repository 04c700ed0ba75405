// `extbackend cluster build|image|up|run|down|status`: the local control plane and
// images for development and tests. `up` runs `run` as a detached background process that
// owns the cluster; `down` asks it to stop and waits until it has.
import { execFile, spawn } from 'node:child_process';
import { closeSync, existsSync, openSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { REPO_ROOT, ensureControlPlane } from '../devcluster/build.ts';
import { clusterAnswers, startLocalCluster } from '../devcluster/cluster.ts';
import { describeImage, ensureImage, ensurePauseImage } from '../devcluster/image.ts';
import { ensureNodeBinaries } from '../devcluster/node-build.ts';
import { installMonitoringCrds } from '../devcluster/prometheus-build.ts';
import { logger } from '../log.ts';
import { UsageError, intFlag, type ParsedArgs, stringFlag } from './args.ts';
import { untilSignal } from './signals.ts';

const run = promisify(execFile);

export const clusterFlags = {
  'state-dir': { type: 'string', help: 'where `up` writes kubeconfig, nodes.json, pid and log', default: path.join(REPO_ROOT, '.cluster') },
  nodes: { type: 'string', help: 'real nodes to add (kubelet + containerd in network namespaces, running the image built here; needs root)', default: '0' },
} as const;

const files = (stateDir: string) => ({
  kubeconfig: path.join(stateDir, 'kubeconfig'),
  pid: path.join(stateDir, 'cluster.pid'),
  nodes: path.join(stateDir, 'nodes.json'),
  log: path.join(stateDir, 'cluster.log'),
});

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function readPid(file: string): Promise<number | undefined> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  return Number.isInteger(pid) && pid > 0 && alive(pid) ? pid : undefined;
}

async function runForeground(stateDir: string, nodes: number): Promise<void> {
  const f = files(stateDir);
  await mkdir(stateDir, { recursive: true });
  const cluster = await startLocalCluster({ nodes });
  try {
    await copyFile(cluster.kubeconfig, f.kubeconfig);
    if (nodes) {
      await writeFile(f.nodes, JSON.stringify(cluster.nodes, null, 2) + '\n');
      // So that `kubectl apply -k config/overlays/local` (with its monitoring component) works as README says.
      await installMonitoringCrds((...args) => run(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...args]));
    }
    await writeFile(f.pid, `${process.pid}\n`);
    logger().info('cluster running; stop with `npm run cluster:down` or Ctrl-C', { kubeconfig: f.kubeconfig, version: cluster.version });
    await untilSignal();
  } finally {
    await cluster.stop();
    await rm(f.kubeconfig, { force: true });
    await rm(f.nodes, { force: true });
    await rm(f.pid, { force: true });
  }
}

async function up(stateDir: string, nodes: number): Promise<void> {
  const f = files(stateDir);
  if ((await readPid(f.pid)) && (await clusterAnswers(f.kubeconfig))) {
    process.stdout.write(`already running: ${f.kubeconfig}\n`);
    return;
  }
  await mkdir(stateDir, { recursive: true });
  await rm(f.kubeconfig, { force: true });
  const logFd = openSync(f.log, 'w');
  const child = spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'cluster', 'run', `--state-dir=${stateDir}`, `--nodes=${nodes}`], {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    env: { ...process.env, EXTBACKEND_LOG_FORMAT: 'text' },
  });
  closeSync(logFd);
  child.unref();
  // The first run builds the control plane, which takes a while: wait as long as
  // the background process lives.
  for (;;) {
    if (child.exitCode !== null || !alive(child.pid!)) {
      const tail = (await readFile(f.log, 'utf8').catch(() => '')).split('\n').slice(-25).join('\n');
      throw new Error(`the local cluster did not start; ${f.log} ends with:\n${tail}`);
    }
    if (existsSync(f.pid) && (await clusterAnswers(f.kubeconfig))) break;
    await sleep(500);
  }
  process.stdout.write(`local cluster up (pid ${child.pid}); kubeconfig: ${f.kubeconfig}\n  kubectl --kubeconfig ${path.relative(process.cwd(), f.kubeconfig) || f.kubeconfig} get --raw /readyz\n`);
}

async function down(stateDir: string): Promise<void> {
  const f = files(stateDir);
  const pid = await readPid(f.pid);
  if (!pid) {
    process.stdout.write('no local cluster is running\n');
    await rm(f.kubeconfig, { force: true });
    return;
  }
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 60_000;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      break;
    }
    await sleep(200);
  }
  await rm(f.pid, { force: true });
  process.stdout.write('local cluster stopped\n');
}

export async function clusterCommand(args: ParsedArgs): Promise<void> {
  const stateDir = path.resolve(stringFlag(args, 'state-dir')!);
  const nodes = intFlag(args, 'nodes', 0, 8) ?? 0;
  const sub = args.positionals[0];
  switch (sub) {
    case 'build': {
      const build = await ensureControlPlane();
      process.stdout.write(`${build.binDir}\n`);
      if (nodes) process.stdout.write(`${(await ensureNodeBinaries()).binDir}\n`);
      return;
    }
    case 'image': {
      // One after the other: each build alone keeps the two cores busy.
      const image = await ensureImage();
      const pause = await ensurePauseImage();
      process.stdout.write(`${describeImage(image)}\n\n${describeImage(pause)}\n`);
      return;
    }
    case 'run':
      return runForeground(stateDir, nodes);
    case 'up':
      return up(stateDir, nodes);
    case 'down':
      return down(stateDir);
    case 'status': {
      const ok = await clusterAnswers(files(stateDir).kubeconfig);
      process.stdout.write(ok ? `running: ${files(stateDir).kubeconfig}\n` : 'not running\n');
      if (!ok) process.exitCode = 1;
      return;
    }
    default:
      throw new UsageError(`cluster: expected build, image, up, run, down or status, got ${sub ?? 'nothing'}`);
  }
}
