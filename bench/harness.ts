// What the benchmarks share: the operator as a child process (so its CPU and RSS are
// its own), reading its metrics, and cleanup that also runs on Ctrl-C.
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/devcluster/build.ts';

/** The V8 flags config/operator/deployment.yaml runs the operator with. */
export const OPERATOR_NODE_OPTIONS = '--max-old-space-size=192 --max-semi-space-size=8';

export interface OperatorProcess {
  child: ChildProcess;
  port: number;
  metrics(): Promise<string>;
  /** Peak resident set (VmHWM) in MiB. */
  peakRssMiB(): number;
  /** CPU seconds used so far (user + system). */
  cpuSeconds(): number;
  stop(): Promise<void>;
}

export function spawnOperator(kubeconfig: string, extraArgs: string[] = [], nodeOptions = process.env.BENCH_NODE_OPTIONS ?? OPERATOR_NODE_OPTIONS): OperatorProcess {
  const port = 18000 + Math.floor(Math.random() * 1000);
  const child = spawn(
    'setpriv',
    ['--pdeathsig', 'KILL', '--', process.execPath, path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'operator', '--kubeconfig', kubeconfig, '--leader-elect=false', `--http-address=127.0.0.1:${port}`, ...extraArgs],
    { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, EXTBACKEND_LOG_LEVEL: 'warn', NODE_OPTIONS: nodeOptions } },
  );
  const proc = (): string => readFileSync(`/proc/${child.pid}/status`, 'utf8');
  return {
    child,
    port,
    metrics: () => scrapeMetrics(`http://127.0.0.1:${port}/metrics`),
    peakRssMiB: () => Number(/VmHWM:\s+(\d+)/.exec(proc())?.[1] ?? 0) / 1024,
    cpuSeconds: () => {
      const f = readFileSync(`/proc/${child.pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      return (Number(f[11]) + Number(f[12])) / 100; // utime + stime in USER_HZ (100)
    },
    stop: async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** A /metrics page, retried until the process serves it. */
export async function scrapeMetrics(url: string): Promise<string> {
  for (;;) {
    try {
      return await (await fetch(url)).text();
    } catch {
      await sleep(100);
    }
  }
}

/** Sum of the samples of a metric whose lines match `include` and not `exclude`. */
export function sumMetric(text: string, include: RegExp, exclude?: RegExp): number {
  return text
    .split('\n')
    .filter((l) => include.test(l) && !exclude?.test(l))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
}

/** Runs `cleanup` once, on normal exit or on SIGINT/SIGTERM. */
export function withCleanup(cleanup: () => Promise<void>): () => Promise<void> {
  let done: Promise<void> | undefined;
  const once = (): Promise<void> => (done ??= cleanup());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.once(sig, () => {
      void once().finally(() => process.exit(130));
    });
  }
  return once;
}
