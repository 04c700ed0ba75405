// Test harness for integration tests: the shared control plane started by
// test/run.ts, a namespace per test, kubectl, and waiting with useful failures.
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import * as k8s from '@kubernetes/client-node';
import type { ExecutionContext } from 'ava';

const run = promisify(execFile);

export function testKubeconfig(): string {
  const file = process.env.EXTBACKEND_TEST_KUBECONFIG;
  if (!file) {
    throw new Error(
      'EXTBACKEND_TEST_KUBECONFIG is not set: run integration tests through `npm test` (it starts a local control plane), ' +
        'or set it to a running one, e.g. EXTBACKEND_TEST_KUBECONFIG=.cluster/kubeconfig after `npm run cluster:up`.',
    );
  }
  return file;
}

export function kubectlPath(): string {
  return process.env.EXTBACKEND_TEST_KUBECTL ?? 'kubectl';
}

export function kubeConfig(): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  kc.loadFromFile(testKubeconfig());
  return kc;
}

export interface KubectlResult {
  stdout: string;
  stderr: string;
}

/** Runs kubectl against the test cluster; rejects with kubectl's stderr on failure. */
export async function kubectl(args: string[], input?: string): Promise<KubectlResult> {
  return kubectlAt(testKubeconfig(), args, input);
}

/** Runs kubectl against the cluster of `kubeconfig` (a test's own cluster). */
export async function kubectlAt(kubeconfig: string, args: string[], input?: string): Promise<KubectlResult> {
  const child = run(kubectlPath(), ['--kubeconfig', kubeconfig, ...args], { maxBuffer: 64 * 1024 * 1024 });
  if (input !== undefined) {
    child.child.stdin?.end(input);
  }
  try {
    const { stdout, stderr } = await child;
    return { stdout, stderr };
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`kubectl ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

export async function applyYaml(yaml: string, namespace?: string): Promise<KubectlResult> {
  return kubectl([...(namespace ? ['-n', namespace] : []), 'apply', '-f', '-'], yaml);
}

/** A fresh namespace for one test, deleted (without waiting) when the test ends. */
export async function testNamespace(t: ExecutionContext, prefix = 't'): Promise<string> {
  const slug = t.title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 30).replace(/-$/, '');
  const name = `${prefix}-${slug}-${randomBytes(3).toString('hex')}`;
  await kubectl(['create', 'namespace', name]);
  t.teardown(async () => {
    await kubectl(['delete', 'namespace', name, '--wait=false', '--ignore-not-found']).catch(() => undefined);
  });
  return name;
}

export interface WaitOptions {
  timeoutMs?: number;
  intervalMs?: number;
}

/** Stretches every wait, for runs on a slow machine (the IPVS guest is emulated: 4). */
export const TIME_SCALE = Number(process.env.EXTBACKEND_TEST_TIME_SCALE ?? '1');

/**
 * Polls `probe` until it returns a value other than undefined/false. On timeout the
 * error names what was awaited and the last value or error seen.
 */
export async function waitFor<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, options: WaitOptions = {}): Promise<T> {
  const { intervalMs = 200 } = options;
  const timeoutMs = (options.timeoutMs ?? 30_000) * TIME_SCALE;
  const deadline = Date.now() + timeoutMs;
  let last: unknown = 'never probed';
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
      last = value;
    } catch (err) {
      last = err instanceof Error ? err.message : err;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}; last result: ${typeof last === 'string' ? last : JSON.stringify(last)}`);
    }
    await sleep(intervalMs);
  }
}

/** True when the API answered 404 for the object. */
export function isNotFound(err: unknown): boolean {
  return (err as { code?: number }).code === 404;
}
