// Benchmark: N probe targets (addresses of one backend namespace, answered by one TCP
// server through an AnyIP route) at a 10 s period, through the real operator and API.
// Prints probes per second, the operator's CPU share of one core, p99 scheduling
// lateness, and detection latency when the server dies. Needs root (network namespaces).
// Usage: node bench/probes.ts [targets] [periodSeconds]
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster } from '../src/devcluster/cluster.ts';
import { KubeClient, loadKubeConfig } from '../src/runtime/kube-client.ts';
import { backendServer } from '../test/helpers/backends.ts';
import { assertRouteVia, createBackendHost, ip } from '../test/helpers/netns.ts';
import { OPERATOR_NODE_OPTIONS, spawnOperator, sumMetric, withCleanup, type OperatorProcess } from './harness.ts';

const targets = Number(process.argv[2] ?? 10_000);
const period = Number(process.argv[3] ?? 10);
const perBackend = 1000;
const ns = 'bench-probes';
const PREFIX = '198.19.0.0/18'; // 16k addresses, all answered inside the backend namespace
const PROBES = /^extbackend_probe_results_total/;
const FAILED = /^extbackend_probe_results_total\{[^}]*outcome="(error|failure|timeout)"/;

const address = (i: number): string => `198.19.${Math.floor((i + 2) / 256)}.${(i + 2) % 256}`;

const cluster = await startLocalCluster();
const host = await createBackendHost();
let operator: OperatorProcess | undefined;
const cleanup = withCleanup(async () => {
  await operator?.stop();
  await host.destroy();
  await ip('route', 'del', PREFIX).catch(() => undefined);
  await cluster.stop();
});
try {
  // AnyIP: the namespace accepts every address of the prefix; the host routes it there.
  await ip('route', 'replace', PREFIX, 'via', host.ip, 'dev', host.hostIf);
  await ip('-n', host.name, 'route', 'add', 'local', PREFIX, 'dev', 'lo');
  await assertRouteVia(address(0), host.hostIf);
  await assertRouteVia(address(targets - 1), host.hostIf);
  const server = await backendServer({ ...host, ip: '0.0.0.0' }, 'tcp', 7000);

  const kubectl = (...args: string[]): string => execFileSync(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...args], { encoding: 'utf8' });
  kubectl('apply', '-k', path.join(REPO_ROOT, 'crds'));
  kubectl('wait', '--for=condition=Established', 'crd', '--all');
  kubectl('create', 'namespace', ns);
  const client = await KubeClient.fromKubeConfig(loadKubeConfig(cluster.kubeconfig));
  operator = spawnOperator(cluster.kubeconfig);
  await operator.metrics();

  for (let b = 0; b * perBackend < targets; b++) {
    const addresses = Array.from({ length: Math.min(perBackend, targets - b * perBackend) }, (_, j) => ({ ip: address(b * perBackend + j) }));
    await client.create(`/apis/extbackend.io/v1alpha1/namespaces/${ns}/externalbackends`, {
      apiVersion: 'extbackend.io/v1alpha1',
      kind: 'ExternalBackend',
      metadata: { name: `probed-${b}`, namespace: ns },
      spec: { addresses, ports: [{ name: 'tcp', port: 7000 }], healthCheck: { type: 'tcp', periodSeconds: period, timeoutSeconds: 1, failureThreshold: 3 } },
    });
  }
  const readyCount = async (): Promise<number> => {
    const slices = await client.list<{ endpoints?: { conditions: { ready: boolean } }[] }>(`/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`);
    return slices.items.flatMap((s) => s.endpoints ?? []).filter((e) => e.conditions.ready).length;
  };
  const t0 = Date.now();
  while ((await readyCount()) < targets) {
    if (Date.now() - t0 > 120_000) throw new Error(`only ${await readyCount()} of ${targets} targets became ready`);
    await sleep(500);
  }
  const allReady = (Date.now() - t0) / 1000;

  // Steady state over two periods: probes per second and CPU.
  const before = { t: Date.now(), cpu: operator.cpuSeconds(), probes: sumMetric(await operator.metrics(), PROBES) };
  await sleep(period * 2000);
  const m = await operator.metrics();
  const seconds = (Date.now() - before.t) / 1000;
  const rate = (sumMetric(m, PROBES) - before.probes) / seconds;
  const cpuShare = (operator.cpuSeconds() - before.cpu) / seconds;
  const total = sumMetric(m, /^extbackend_probe_lateness_seconds_count/);
  const buckets = m
    .split('\n')
    .filter((l) => l.startsWith('extbackend_probe_lateness_seconds_bucket'))
    .map((l) => ({ le: /le="([^"]+)"/.exec(l)![1]!, n: Number(l.split(' ').pop()) }));
  const p99 = buckets.find((b) => b.n >= total * 0.99)?.le ?? '+Inf';
  const failedBefore = sumMetric(m, FAILED);

  // Detection: the server dies; how long until every endpoint is published not ready?
  await server.stop();
  const killed = Date.now();
  let half: number | undefined;
  for (;;) {
    const ready = await readyCount();
    if (half === undefined && ready <= targets / 2) half = (Date.now() - killed) / 1000;
    if (ready === 0) break;
    await sleep(250);
  }
  const detected = (Date.now() - killed) / 1000;
  const failedAfter = sumMetric(await operator.metrics(), FAILED);
  await client.close();

  console.log(`probe benchmark: ${targets} TCP targets, period ${period} s, timeout 1 s, failureThreshold 3 (operator NODE_OPTIONS="${process.env.BENCH_NODE_OPTIONS ?? OPERATOR_NODE_OPTIONS}")`);
  console.log(`  all targets ready after:             ${allReady.toFixed(1)} s`);
  console.log(`  probes per second (steady):          ${rate.toFixed(0)} (expected ${(targets / period).toFixed(0)}; goal 1000)`);
  console.log(`  operator CPU, share of one core:     ${(cpuShare * 100).toFixed(1)} % (goal < 50 %)`);
  console.log(`  p99 scheduling lateness:             <= ${(Number(p99) * 1000).toFixed(0)} ms (histogram bucket bound; goal < 200 ms)`);
  console.log(`  detection, server killed -> all not ready: half ${half?.toFixed(1)} s, all ${detected.toFixed(1)} s (bound failureThreshold x period + timeout = ${3 * period + 1} s, plus the API write)`);
  console.log(`  failed probes during detection:      ${failedAfter - failedBefore}`);
} finally {
  await cleanup();
}
