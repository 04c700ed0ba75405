// Benchmark: N ExternalBackends x M addresses against the local control plane.
// Prints time to convergence, API writes per object, writes on a restart (resync),
// and the operator's peak RSS. Usage: node bench/operator.ts [backends] [addresses]
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync } from 'node:child_process';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster } from '../src/devcluster/cluster.ts';
import { KubeClient } from '../src/runtime/kube-client.ts';

// The operator runs with the V8 flags its Deployment sets (config/operator/deployment.yaml):
// a small young generation keeps RSS down at no measurable cost in convergence time.
const OPERATOR_NODE_OPTIONS = '--max-old-space-size=192 --max-semi-space-size=8';

const backends = Number(process.argv[2] ?? 1000);
const perBackend = Number(process.argv[3] ?? 10);
const ns = 'bench';

const cluster = await startLocalCluster();
const kubectl = (...args: string[]): string => execFileSync(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...args], { encoding: 'utf8' });
let operator: ChildProcess | undefined;
try {
  kubectl('apply', '-f', path.join(REPO_ROOT, 'crds'));
  kubectl('wait', '--for=condition=Established', 'crd', '--all');
  kubectl('create', 'namespace', ns);
  const client = await KubeClient.fromKubeConfig((await import('../src/runtime/kube-client.ts')).loadKubeConfig(cluster.kubeconfig));
  const port = 18000 + Math.floor(Math.random() * 1000);

  const startOperator = (): ChildProcess =>
    spawn(process.execPath, [path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'operator', '--kubeconfig', cluster.kubeconfig, '--leader-elect=false', `--http-address=127.0.0.1:${port}`, '--workers=8'], {
      stdio: ['ignore', 'ignore', 'inherit'],
      env: { ...process.env, EXTBACKEND_LOG_LEVEL: 'warn', NODE_OPTIONS: process.env.BENCH_NODE_OPTIONS ?? OPERATOR_NODE_OPTIONS },
    });
  const metrics = async (): Promise<string> => {
    for (;;) {
      try {
        return await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      } catch {
        await sleep(100);
      }
    }
  };
  const sum = (text: string, name: string, exclude: RegExp = /$^/): number =>
    text
      .split('\n')
      .filter((l) => l.startsWith(name) && !exclude.test(l))
      .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
  const peakRss = (p: ChildProcess): number => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${p.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;

  operator = startOperator();
  await metrics();
  const started = Date.now();
  // Create the backends with bounded concurrency, as kubectl apply of many files would.
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < backends) {
        const i = next++;
        const addresses = Array.from({ length: perBackend }, (_, j) => ({ ip: `198.51.${100 + Math.floor((i * perBackend + j) / 250) % 100}.${((i * perBackend + j) % 250) + 1}` }));
        await client.create(`/apis/extbackend.io/v1alpha1/namespaces/${ns}/externalbackends`, {
          apiVersion: 'extbackend.io/v1alpha1',
          kind: 'ExternalBackend',
          metadata: { name: `xb-${i}`, namespace: ns },
          spec: { addresses, ports: [{ name: 'http', port: 80 }] },
        });
      }
    }),
  );
  const created = Date.now();
  let peakHeap = 0;
  for (;;) {
    peakHeap = Math.max(peakHeap, sum(await metrics(), 'nodejs_heap_used_bytes') / 2 ** 20);
    const slices = await client.list<{ endpoints?: unknown[] }>(`/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`, { labelSelector: 'endpointslice.kubernetes.io/managed-by=operator.extbackend.io' });
    const xbs = await client.list<{ status?: { state?: string } }>(`/apis/extbackend.io/v1alpha1/namespaces/${ns}/externalbackends`);
    const good = slices.items.filter((s) => s.endpoints?.length === perBackend).length;
    const ready = xbs.items.filter((x) => x.status?.state === 'Ready').length;
    if (good === backends && ready === backends) break;
    await sleep(250);
  }
  const converged = Date.now();
  const m1 = await metrics();
  const writes = sum(m1, 'extbackend_api_writes_total', /resource="(events|leases)"/);
  const rss1 = peakRss(operator);
  operator.kill('SIGTERM');
  await new Promise((r) => operator!.once('exit', r));

  // Resync: a fresh operator over the same, converged objects.
  operator = startOperator();
  for (;;) {
    const m = await metrics();
    if (sum(m, 'extbackend_reconcile_total') >= backends && /extbackend_workqueue_depth\{[^}]*\} 0/.test(m) && /extbackend_workqueue_active\{[^}]*\} 0/.test(m)) break;
    await sleep(200);
  }
  const resyncWrites = sum(await metrics(), 'extbackend_api_writes_total', /resource="(events|leases)"/);
  const rss2 = peakRss(operator);
  await client.close();

  const owned = backends * 3; // Service, one EndpointSlice, Endpoints
  console.log(`operator benchmark: ${backends} ExternalBackends x ${perBackend} addresses (Kubernetes ${cluster.version}, ${(await import('node:os')).cpus().length} CPUs, NODE_OPTIONS="${process.env.BENCH_NODE_OPTIONS ?? OPERATOR_NODE_OPTIONS}")`);
  console.log(`  create ${backends} objects:            ${((created - started) / 1000).toFixed(1)} s`);
  console.log(`  converged (every slice + status):   ${((converged - started) / 1000).toFixed(1)} s after the first create (goal < 60 s)`);
  console.log(`  API writes:                         ${writes} = ${(writes / backends).toFixed(2)} per backend (owned objects + status = ${(owned + backends) / backends})`);
  console.log(`  writes on a restart (resync):       ${resyncWrites} (goal 0)`);
  console.log(`  operator peak V8 heap in use:       ${peakHeap.toFixed(0)} MiB (sampled)`);
  console.log(`  operator peak RSS:                  ${rss1.toFixed(0)} MiB during convergence, ${rss2.toFixed(0)} MiB on resync (goal < 300 MiB)`);
} finally {
  operator?.kill('SIGTERM');
  await cluster.stop();
}
