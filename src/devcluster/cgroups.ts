// A cgroup subtree per local node, in every hierarchy this host mounts. The host is
// cgroup v1 (hybrid: the unified hierarchy holds no controllers but is mounted), and
// kubelet with the cgroupfs driver needs its cgroup root to exist in each v1
// hierarchy; a new v1 cpuset cgroup starts with no CPUs or memory nodes, so those are
// copied from the parent. Everything the node starts (containerd, its shims, the pods)
// lives under the root, which is how stopping a node finds every process to kill.
import { existsSync, readdirSync, readFileSync, rmdirSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const CGROUP_MOUNT = '/sys/fs/cgroup';

/** Hierarchy mount points (cpu, memory, ..., systemd, unified), skipping symlinked aliases like cpu,cpuacct. */
export function hierarchies(): string[] {
  if (!existsSync(CGROUP_MOUNT)) return [];
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((m): m is string => !!m && m.startsWith(`${CGROUP_MOUNT}/`));
  return [...new Set(mounts)];
}

function makeCgroup(hierarchy: string, relative: string): void {
  let current = hierarchy;
  for (const part of relative.split('/').filter(Boolean)) {
    const parent = current;
    current = path.join(current, part);
    if (existsSync(current)) continue;
    mkdirSync(current);
    for (const file of ['cpuset.cpus', 'cpuset.mems']) {
      const own = path.join(current, file);
      if (existsSync(own) && readFileSync(own, 'utf8').trim() === '') writeFileSync(own, readFileSync(path.join(parent, file), 'utf8'));
    }
  }
}

/** Creates `relative` (e.g. "extbackend-node-0/runtime") in every hierarchy. */
export function createCgroup(relative: string): void {
  for (const h of hierarchies()) makeCgroup(h, relative);
}

/** Shell words that move the shell into `relative` in every hierarchy and then exec the rest. */
export function enterCgroupCommand(relative: string, command: string[]): string[] {
  const writes = hierarchies()
    .map((h) => `echo $$ > '${path.join(h, relative, 'cgroup.procs')}'`)
    .join(' && ');
  return ['sh', '-c', `${writes} && exec "$@"`, 'enter-cgroup', ...command];
}

function descendantsFirst(dir: string): string[] {
  if (!existsSync(dir)) return [];
  const children = readdirSync(dir).filter((e) => {
    try {
      return statSync(path.join(dir, e)).isDirectory();
    } catch {
      return false;
    }
  });
  return [...children.flatMap((c) => descendantsFirst(path.join(dir, c))), dir];
}

/** Every process in the subtree, per the pids hierarchy (or the first one mounted). */
export function processesIn(relative: string): number[] {
  const h = hierarchies().find((x) => x.endsWith('/pids')) ?? hierarchies()[0];
  if (!h) return [];
  return descendantsFirst(path.join(h, relative)).flatMap((dir) =>
    (existsSync(path.join(dir, 'cgroup.procs')) ? readFileSync(path.join(dir, 'cgroup.procs'), 'utf8') : '')
      .split('\n')
      .filter(Boolean)
      .map(Number),
  );
}

/** SIGKILLs every process in the subtree until none is left, then removes the cgroups bottom-up. */
export async function destroyCgroup(relative: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = processesIn(relative);
    if (pids.length === 0) break;
    if (Date.now() > deadline) throw new Error(`cgroup ${relative} still has processes ${pids.join(', ')} after ${timeoutMs / 1000} s`);
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await sleep(100);
  }
  for (const h of hierarchies()) {
    for (const dir of descendantsFirst(path.join(h, relative))) {
      // An emptied cgroup can stay busy for a moment while the kernel lets go of its last task.
      for (let attempt = 0; ; attempt++) {
        try {
          rmdirSync(dir);
          break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') break;
          if (attempt >= 50) throw err;
          await sleep(100);
        }
      }
    }
  }
}
