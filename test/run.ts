// `npm test` after lint and typecheck: one shared local control plane for the whole
// run, then ava. The cluster is stopped however ava ends (failure, Ctrl-C, SIGTERM).
import { execFileSync, spawn } from 'node:child_process';

import path from 'node:path';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster } from '../src/devcluster/cluster.ts';

const avaCli = path.join(REPO_ROOT, 'node_modules', 'ava', 'entrypoints', 'cli.js');

const cluster = await startLocalCluster();
let exitCode = 1;
try {
  // Our CRDs exist before any test, as in a real install (and the garbage collector
  // has discovered them by the time tests delete owners).
  const kubectl = (...args: string[]): string =>
    execFileSync(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...args], { encoding: 'utf8' });
  kubectl('apply', '-f', path.join(REPO_ROOT, 'crds'));
  kubectl('wait', '--for=condition=Established', '--timeout=60s', 'crd', '--all');
  const ava = spawn(process.execPath, [avaCli, ...process.argv.slice(2)], {
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
  exitCode = await new Promise<number>((resolve) => ava.on('close', (code, signal) => resolve(code ?? (signal ? 1 : 0))));
  const count = (what: string): number => Number(new RegExp(`(\\d+) tests? ${what}`).exec(report)?.[1] ?? 0);
  const failed = count('failed') + count('known failure');
  process.stdout.write(`\ntests: ${passed} passed, ${failed} failed${count('skipped') ? `, ${count('skipped')} skipped` : ''}\n`);
  if (passed === 0 && exitCode === 0) exitCode = 1; // a run that tested nothing is not a success
} finally {
  await cluster.stop();
}
process.exit(exitCode);
