// Benchmark: N ExternalBackends x M addresses against the local control plane.
// Prints time to convergence, API writes per object, writes on a restart (resync),
// and the operator's peak RSS. Usage: node bench/operator.ts [backends] [addresses]
// Environment: BENCH_METRICS_OUT=file (the resynced operator's last /metrics page, to compare names),
// BENCH_NODES=N (N Node objects shaped like a kubelet's, made before the operator starts: the
// operator caches every Node for the address policy, so its RSS grows with the cluster).
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster } from '../src/devcluster/cluster.ts';
import { KubeClient, loadKubeConfig } from '../src/runtime/kube-client.ts';
import { makeNodes, NODE_BYTES } from './kubelet-nodes.ts';
import { OPERATOR_NODE_OPTIONS, spawnOperator, sumMetric, withCleanup, type OperatorProcess } from './harness.ts';

const backends = Number(process.argv[2] ?? 1000);
const perBackend = Number(process.argv[3] ?? 10);
const ns = 'bench';
const WRITES = /^extbackend_api_writes_total/;
const NOT_OBJECTS = /resource="(events|leases)"/;

const cluster = await startLocalCluster();
let operator: OperatorProcess | undefined;
const cleanup = withCleanup(async () => {
  await operator?.stop();
  await cluster.stop();
});
try {
  const kubectl = (...args: string[]): string => execFileSync(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...args], { encoding: 'utf8' });
  kubectl('apply', '-k', path.join(REPO_ROOT, 'crds'));
  kubectl('wait', '--for=condition=Established', 'crd', '--all');
  kubectl('create', 'namespace', ns);
  const client = await KubeClient.fromKubeConfig(loadKubeConfig(cluster.kubeconfig));
  const nodes = Number(process.env.BENCH_NODES ?? 0);
  const nodesMadeIn = await makeNodes(client, nodes);

  operator = spawnOperator(cluster.kubeconfig, ['--workers=8']);
  await operator.metrics();
  const started = Date.now();
  // Create the backends with bounded concurrency, as kubectl apply of many files would.
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < backends) {
        const i = next++;
        const addresses = Array.from({ length: perBackend }, (_, j) => {
          const n = i * perBackend + j;
          return { ip: `198.51.${100 + (Math.floor(n / 250) % 100)}.${(n % 250) + 1}` };
        });
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
    peakHeap = Math.max(peakHeap, sumMetric(await operator.metrics(), /^nodejs_heap_used_bytes/) / 2 ** 20);
    const slices = await client.list<{ endpoints?: unknown[] }>(`/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`, { labelSelector: 'endpointslice.kubernetes.io/managed-by=operator.extbackend.io' });
    const xbs = await client.list<{ status?: { state?: string } }>(`/apis/extbackend.io/v1alpha1/namespaces/${ns}/externalbackends`);
    const good = slices.items.filter((s) => s.endpoints?.length === perBackend).length;
    const ready = xbs.items.filter((x) => x.status?.state === 'Ready').length;
    if (good === backends && ready === backends) break;
    await sleep(250);
  }
  const converged = Date.now();
  const writes = sumMetric(await operator.metrics(), WRITES, NOT_OBJECTS);
  const rss1 = operator.peakRssMiB();
  await operator.stop();

  // Resync: a fresh operator over the same, converged objects.
  operator = spawnOperator(cluster.kubeconfig, ['--workers=8']);
  for (;;) {
    const m = await operator.metrics();
    if (sumMetric(m, /^extbackend_reconcile_total/) >= backends && /extbackend_workqueue_depth\{[^}]*\} 0/.test(m) && /extbackend_workqueue_active\{[^}]*\} 0/.test(m)) break;
    await sleep(200);
  }
  const resyncPage = await operator.metrics();
  const resyncWrites = sumMetric(resyncPage, WRITES, NOT_OBJECTS);
  if (process.env.BENCH_METRICS_OUT) writeFileSync(process.env.BENCH_METRICS_OUT, resyncPage);
  const rss2 = operator.peakRssMiB();
  await client.close();

  const owned = backends * 3; // Service, one EndpointSlice, Endpoints
  console.log(`operator benchmark: ${backends} ExternalBackends x ${perBackend} addresses (Kubernetes ${cluster.version}, ${os.cpus().length} CPUs, NODE_OPTIONS="${process.env.BENCH_NODE_OPTIONS ?? OPERATOR_NODE_OPTIONS}")`);
  if (nodes) console.log(`  ${nodes} kubelet-shaped Nodes in the cluster (made in ${nodesMadeIn.toFixed(0)} s, ${NODE_BYTES} bytes of JSON each)`);
  console.log(`  create ${backends} objects:               ${((created - started) / 1000).toFixed(1)} s`);
  console.log(`  converged (every slice + status):   ${((converged - started) / 1000).toFixed(1)} s after the first create (goal < 60 s)`);
  console.log(`  API writes:                         ${writes} = ${(writes / backends).toFixed(2)} per backend (owned objects + status = ${(owned + backends) / backends})`);
  console.log(`  writes on a restart (resync):       ${resyncWrites} (goal 0)`);
  console.log(`  operator peak V8 heap in use:       ${peakHeap.toFixed(0)} MiB (sampled)`);
  console.log(`  operator peak RSS:                  ${rss1.toFixed(0)} MiB during convergence, ${rss2.toFixed(0)} MiB on resync (goal < 300 MiB)`);
} finally {
  await cleanup();
}

