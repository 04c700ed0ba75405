// `npm test` after lint and typecheck: one shared local control plane for the whole
// run, then ava on this machine, then the IPVS tests in a qemu guest (this kernel has
// no IP_VS). The cluster is stopped however the run ends (failure, Ctrl-C, SIGTERM).
//   node test/run.ts [ava args]   host tests (all, or the files named) and, for a full run, the guest suite
//   node test/run.ts --ipvs-only  just the guest suite
// A full run gives the tests on real nodes (test/e2e/) the machine to themselves, between
// the other host tests and the guest suite: beside every other suite (load 17-28) their
// rollout took 114-155 s and timed requests out, and beside the guest suite its qemu
// (TCG) agents did not sync within 120 s.
import { execFileSync, spawn } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster, type LocalCluster } from '../src/devcluster/cluster.ts';
import { ensureImage, ensurePauseImage } from '../src/devcluster/image.ts';
import { ensureNodeBinaries } from '../src/devcluster/node-build.ts';
import { runGuestSuite } from './guest/run-suite.ts';

const avaCli = path.join(REPO_ROOT, 'node_modules', 'ava', 'entrypoints', 'cli.js');
const args = process.argv.slice(2);
const ipvsOnly = args.includes('--ipvs-only');
// `npm test -- test/unit/...` runs just those host files.
const namesHostFiles = args.some((a) => !a.startsWith('-'));

interface Counts {
  passed: number;
  failed: number;
  skipped: number;
  exitCode: number;
}

async function runHostTests(cluster: LocalCluster, avaArgs: string[]): Promise<Counts> {
  const ava = spawn(process.execPath, [avaCli, ...avaArgs], {
    stdio: ['inherit', 'pipe', 'inherit'],
    env: {
      // Components under test log warnings and errors only, unless asked otherwise.
      EXTBACKEND_LOG_LEVEL: 'warn',
      ...process.env,
      EXTBACKEND_TEST_KUBECONFIG: cluster.kubeconfig,
      EXTBACKEND_TEST_KUBECTL: cluster.build.bin('kubectl'),
      EXTBACKEND_CONTROLPLANE_BIN: cluster.build.binDir,
    },
  });
  // Pass ava's report through, and remember its counts for a plain closing line.
  let report = '';
  let passed = 0;
  ava.stdout.setEncoding('utf8'); // whole characters per chunk, so "✔" is never split
  ava.stdout.on('data', (text: string) => {
    process.stdout.write(text);
    passed += (text.match(/✔/g) ?? []).length;
    report = (report + text).slice(-4096);
  });
  // Forward Ctrl-C/SIGTERM to ava and let it finish its teardown before we stop the cluster.
  const forward = (sig: NodeJS.Signals): void => void ava.kill(sig);
  process.on('SIGINT', forward);
  process.on('SIGTERM', forward);
  const exitCode = await new Promise<number>((resolve) => ava.on('close', (code, signal) => resolve(code ?? (signal ? 1 : 0))));
  process.off('SIGINT', forward);
  process.off('SIGTERM', forward);
  const count = (what: string): number => Number(new RegExp(`(\\d+) tests? ${what}`).exec(report)?.[1] ?? 0);
  return { passed, failed: count('failed') + count('known failure'), skipped: count('skipped'), exitCode };
}

if (args.includes('--help') || args.includes('-h')) {
  process.stdout.write(
    `npm test [-- ARGS]   lint, typecheck, then on Node ${process.versions.node}:\n` +
      '  node test/run.ts [ava args]   host tests (all, or the files named) and, for a full run, the IPVS guest suite\n' +
      '  node test/run.ts --ipvs-only  just the guest suite\n',
  );
  process.exit(0);
}

// The image tests unpack the images built here, and the tests on real nodes run them
// (and the nodes' binaries). A cold build takes minutes, longer than ava's timeout, so
// it happens first; with a warm cache this only hashes the inputs.
if (!ipvsOnly && (!namesHostFiles || args.some((a) => /(^|\/)(image\.test\.ts|e2e\/)/.test(a)))) {
  await ensureImage();
  await ensurePauseImage();
  if (!namesHostFiles || args.some((a) => /(^|\/)e2e\//.test(a))) await ensureNodeBinaries();
}

const cluster = await startLocalCluster();
let exitCode = 1;
try {
  // Our CRDs exist before any test, as in a real install (and the garbage collector
  // has discovered them by the time tests delete owners).
  const kubectl = (...a: string[]): string => execFileSync(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...a], { encoding: 'utf8' });
  kubectl('apply', '-k', path.join(REPO_ROOT, 'crds'));
  kubectl('wait', '--for=condition=Established', '--timeout=60s', 'crd', '--all');

  const none: Counts = { passed: 0, failed: 0, skipped: 0, exitCode: 0 };
  let host: Counts;
  let guest: Awaited<ReturnType<typeof runGuestSuite>> | undefined;
  if (ipvsOnly) {
    host = none;
    guest = await runGuestSuite(cluster);
  } else if (namesHostFiles) {
    host = await runHostTests(cluster, args);
  } else {
    const ownPhase = new Set(['e2e', 'guest', 'helpers']);
    const dirs = readdirSync(path.join(REPO_ROOT, 'test'), { withFileTypes: true }).filter((d) => d.isDirectory() && !ownPhase.has(d.name));
    const first = await runHostTests(cluster, [...dirs.map((d) => `test/${d.name}/**/*.test.ts`), ...args]);
    const e2e = await runHostTests(cluster, ['test/e2e/**/*.test.ts', ...args]);
    guest = await runGuestSuite(cluster);
    host = { passed: first.passed + e2e.passed, failed: first.failed + e2e.failed, skipped: first.skipped + e2e.skipped, exitCode: first.exitCode || e2e.exitCode };
  }
  const passed = host.passed + (guest?.passed ?? 0);
  const failed = host.failed + (guest?.failed ?? 0);
  const guestNote = !guest ? '' : guest.skipped ? `; the IPVS guest suite was SKIPPED: ${guest.skipped}` : ` (IPVS guest: ${guest.passed} passed, ${guest.failed} failed)`;
  process.stdout.write(`\ntests: ${passed} passed, ${failed} failed${host.skipped ? `, ${host.skipped} skipped` : ''}${guestNote}\n`);
  exitCode = host.exitCode || (failed ? 1 : 0);
  if (passed === 0 && exitCode === 0) exitCode = 1; // a run that tested nothing is not a success
} finally {
  await cluster.stop();
}
process.exit(exitCode);
