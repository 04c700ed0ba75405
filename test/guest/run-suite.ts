// Runs the tests under test/guest inside the IPVS guest (src/devcluster/guest-vm.ts)
// against the host's control plane, and reports their counts. When qemu cannot start
// here the suite is reported as skipped with the reason — never as passed.
import { copyFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import type { LocalCluster } from '../../src/devcluster/cluster.ts';
import { ensureGuestImage, guestUnavailableReason, runInGuest, type GuestImage } from '../../src/devcluster/guest-vm.ts';
import { createLogger, type Logger } from '../../src/log.ts';

export interface GuestSuiteResult {
  passed: number;
  failed: number;
  /** Why the suite did not run, when it did not. */
  skipped?: string;
  bootMs?: number;
}

export async function runGuestSuite(cluster: LocalCluster, avaArgs: string[] = []): Promise<GuestSuiteResult> {
  const unavailable = guestUnavailableReason();
  if (unavailable) return { passed: 0, failed: 0, skipped: unavailable };
  const log = createLogger({ level: 'info' });
  let image;
  try {
    image = await ensureGuestImage(log);
  } catch (err) {
    return { passed: 0, failed: 0, skipped: `the guest image could not be built: ${(err as Error).message}` };
  }
  const first = await runOnce(cluster, image, avaArgs, log);
  if (!first.crashed) return first;
  // A test process killed by a signal under emulation is the emulator's fault, not a
  // verdict: say so and run the suite once more; that second run's result stands.
  process.stdout.write('[ipvs guest] a test process crashed (killed by a signal) in the emulated guest; running the suite once more\n');
  return runOnce(cluster, image, avaArgs, log);
}

async function runOnce(cluster: LocalCluster, image: GuestImage, avaArgs: string[], log: Logger): Promise<GuestSuiteResult & { crashed: boolean }> {
  let passed = 0;
  let failed = 0;
  let crashed = false;
  const avaCli = path.join(REPO_ROOT, 'node_modules', 'ava', 'entrypoints', 'cli.js');
  const started = Date.now();
  const result = await runInGuest(
    {
      image,
      // A copy in the shared job directory: the tests write their agents' kubeconfigs next to it.
      script: `cp "$EXTBACKEND_HOST_KUBECONFIG" /xb-job/kubeconfig\nnode ${avaCli} --config test/guest/ava.config.mjs --tap ${avaArgs.map((a) => `'${a}'`).join(' ')}\n`,
      env: {
        EXTBACKEND_HOST_KUBECONFIG: '/xb-job/host.kubeconfig',
        EXTBACKEND_TEST_KUBECONFIG: '/xb-job/kubeconfig',
        EXTBACKEND_TEST_KUBECTL: cluster.build.bin('kubectl'),
        EXTBACKEND_CONTROLPLANE_BIN: cluster.build.binDir,
        EXTBACKEND_LOG_LEVEL: process.env.EXTBACKEND_LOG_LEVEL ?? 'warn',
        // Emulated CPUs are several times slower: every wait in the tests stretches.
        EXTBACKEND_TEST_TIME_SCALE: '6',
      },
      apiServerPort: cluster.apiserverPort,
      cpus: 2,
      memoryMiB: 4096,
      timeoutMs: 25 * 60_000,
      log,
      onLine: (line) => {
        if (/^ok \d+/.test(line) && !/# SKIP|# TODO/.test(line)) passed++;
        if (/^not ok \d+/.test(line)) {
          failed++;
          if (/exited due to SIG(SEGV|ILL|BUS)/.test(line)) crashed = true;
        }
        process.stdout.write(`[ipvs guest] ${line}\n`);
      },
      beforeBoot: (jobDir) => copyFile(cluster.kubeconfig, path.join(jobDir, 'host.kubeconfig')),
    },
    REPO_ROOT,
  );
  await rm(result.jobDir, { recursive: true, force: true });
  process.stdout.write(`[ipvs guest] booted in ${((result.bootMs ?? 0) / 1000).toFixed(1)} s; suite took ${((Date.now() - started) / 1000).toFixed(0)} s; exit ${result.exitCode ?? 'none (the guest died or timed out)'}\n`);
  if (result.exitCode === undefined || (result.exitCode !== 0 && failed === 0)) failed++;
  // Only a run whose every failure is such a crash is worth repeating.
  return { passed, failed, crashed: crashed && failed === 1, ...(result.bootMs ? { bootMs: result.bootMs } : {}) };
}
