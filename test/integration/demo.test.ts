// `npm start` on a machine with no cluster configured: the demo brings up its own
// control plane, the operator and the samples, shows them Ready, and cleans up on Ctrl-C.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { waitFor } from '../helpers/cluster.ts';

test('the demo shows every sample Ready and leaves nothing behind on Ctrl-C', async (t) => {
  const env = { ...process.env };
  delete env.KUBECONFIG;
  delete env.KUBERNETES_SERVICE_HOST;
  const demo = spawn(process.execPath, ['--disable-warning=ExperimentalWarning', path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'demo'], { env: { ...env, EXTBACKEND_LOG_FORMAT: 'json', EXTBACKEND_LOG_LEVEL: 'info' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  demo.stdout.on('data', (d: Buffer) => (out += d.toString()));
  demo.stderr.on('data', (d: Buffer) => (err += d.toString()));
  // On failure: Ctrl-C first so the demo cleans up, then make sure it is gone.
  t.teardown(async () => {
    if (demo.exitCode !== null || demo.signalCode !== null) return;
    const exited = new Promise((r) => demo.once('exit', r));
    demo.kill('SIGINT');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000).unref())]);
    demo.kill('SIGKILL');
  });
  await waitFor('the samples to show Ready', () => {
    const tables = out.split(/\n(?=\d{4}-\d\d-\d\dT)/);
    const last = tables[tables.length - 1] ?? '';
    return ['etcd-k8s', 'http-external', 'cache-nodeport'].every((n) => new RegExp(`${n}\\s+\\d+/\\d+\\s+\\S+\\s+\\S+\\s+Ready`).test(last)) ? last : false;
  }, { timeoutMs: 60_000, intervalMs: 250 }).catch((e: Error) => {
    throw new Error(`${e.message}\nstdout:\n${out}\nstderr:\n${err.slice(-2000)}`);
  });
  // As root the demo also runs an agent in a node namespace and reaches every sample through it.
  if (process.getuid?.() === 0) {
    const tried = await waitFor('the demo node to reach every sample', () => (/from the demo node/.test(out) ? out.slice(out.indexOf('from the demo node')) : false), { timeoutMs: 30_000 });
    for (const [name, addr] of [['etcd-k8s', /172\.16\.238\.1[0-2]:2379/], ['http-external', /172\.16\.238\.2[01]:80/], ['cache-nodeport', /172\.16\.239\.1[0-2]:6379/]] as const) {
      t.regex(tried, new RegExp(`${name} \\S+ -> answered by ${addr.source}`), name);
    }
  }
  const workDir = /local cluster: https:\/\/127\.0\.0\.1:\d+/.exec(out);
  t.truthy(workDir, 'it said where its cluster is');
  const kubeconfig = /kubectl --kubeconfig (\S+) get externalbackends/.exec(out)![1]!;
  t.true(existsSync(kubeconfig));
  const code = await new Promise<number | null>((resolve) => {
    demo.once('exit', (c) => resolve(c));
    demo.kill('SIGINT');
  });
  t.is(code, 0);
  t.false(existsSync(path.dirname(kubeconfig)), 'its temp dir is gone');
  t.regex(err, /stopped and cleaned up/);
  const node = /from the demo node \((\S+)\)/.exec(out)?.[1];
  if (node) t.notRegex((await import('node:child_process')).execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }), new RegExp(node.replace(/-node-/, '-\\w+-')), 'none of its namespaces is left');
});
