// Benchmark: the node agent at 1 000, 5 000 and 10 000 Services x 10 endpoints
// (selectorless Services with the proxy label and hand-written EndpointSlices) against
// the local control plane. For each size and mode, a fresh agent in its own network
// namespace: full sync time, one-Service-change sync time, rules (and map elements),
// agent RSS. Needs root. Usage: node bench/agent.ts [sizes=1000,5000,10000] [modes=iptables,nftables]
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster } from '../src/devcluster/cluster.ts';
import { KubeClient, loadKubeConfig } from '../src/runtime/kube-client.ts';
import { createBackendHost, type BackendHost } from '../test/helpers/netns.ts';
import { sumMetric, withCleanup } from './harness.ts';

const sizes = (process.argv[2] ?? '1000,5000,10000').split(',').map(Number);
const modes = (process.argv[3] ?? 'iptables,nftables').split(',');
const ns = 'bench-agent';
const ENDPOINTS = 10;

const cluster = await startLocalCluster();
let host: BackendHost | undefined;
const cleanup = withCleanup(async () => {
  await host?.destroy();
  await cluster.stop();
});

const endpointIP = (svc: number, e: number, salt = 0): string => {
  const n = svc * ENDPOINTS + e + salt;
  return `198.18.${128 + Math.floor(n / 250) % 128}.${(n % 250) + 1}`;
};

try {
  const kubectl = (...args: string[]): string => execFileSync(cluster.build.bin('kubectl'), ['--kubeconfig', cluster.kubeconfig, ...args], { encoding: 'utf8' });
  kubectl('create', 'namespace', ns);
  const client = await KubeClient.fromKubeConfig(loadKubeConfig(cluster.kubeconfig));
  const slicePath = `/apis/discovery.k8s.io/v1/namespaces/${ns}/endpointslices`;
  const sliceBody = (i: number, salt = 0) => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `svc-${i}`, namespace: ns, labels: { 'kubernetes.io/service-name': `svc-${i}` } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints: Array.from({ length: ENDPOINTS }, (_, e) => ({ addresses: [endpointIP(i, e, salt)], conditions: { ready: true } })),
  });
  let created = 0;
  const grow = async (to: number): Promise<void> => {
    let next = created;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < to) {
          const i = next++;
          await client.create(`/api/v1/namespaces/${ns}/services`, {
            metadata: { name: `svc-${i}`, labels: { 'service.kubernetes.io/service-proxy-name': 'extbackend' } },
            spec: { ports: [{ name: 'http', port: 80, targetPort: 8080 }] },
          });
          await client.create(slicePath, sliceBody(i));
        }
      }),
    );
    created = to;
  };

  const agentKubeconfig = path.join(path.dirname(cluster.kubeconfig), 'bench-agent.kubeconfig');
  console.log(`agent benchmark: Services x ${ENDPOINTS} endpoints, one fresh agent per size and mode (Kubernetes ${cluster.version})`);
  console.log('  services  mode       full sync   one-change sync   rules(+elements)   agent RSS');
  for (const size of sizes) {
    await grow(size);
    for (const mode of modes) {
      host = await createBackendHost();
      const port = /server: https:\/\/127\.0\.0\.1:(\d+)/.exec(cluster.kubeconfigYaml)![1];
      const kc = cluster.kubeconfigYaml.replace(/server: https:\/\/127\.0\.0\.1:\d+/, `server: https://${host.hostIP}:${port}\n    tls-server-name: localhost`);
      (await import('node:fs')).writeFileSync(agentKubeconfig, kc, { mode: 0o600 });
      const agent = host.spawn(process.execPath, ['--disable-warning=ExperimentalWarning', path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'agent', '--kubeconfig', agentKubeconfig, '--node-name', 'bench-node', '--proxy-mode', mode, '--min-sync-period', '100ms', '--sync-period', '1h', '--http-address', `${host.ip}:10266`], {
        env: { ...process.env, EXTBACKEND_LOG_LEVEL: 'warn' },
      });
      const metrics = async (): Promise<string> => {
        for (;;) {
          try {
            return await (await fetch(`http://${host!.ip}:10266/metrics`)).text();
          } catch {
            await sleep(100);
          }
        }
      };
      const count = (m: string, kind: string): number => sumMetric(m, new RegExp(`^extbackend_agent_sync_duration_seconds_count\\{kind="${kind}"\\}`));
      const sum = (m: string, kind: string): number => sumMetric(m, new RegExp(`^extbackend_agent_sync_duration_seconds_sum\\{kind="${kind}"\\}`));
      let m = await metrics();
      while (count(m, 'full') < 1) {
        await sleep(200);
        m = await metrics();
      }
      await sleep(1500); // let follow-up syncs of the initial burst settle
      m = await metrics();
      const full = sum(m, 'full') / count(m, 'full');
      // One Service changes: its slice gets other endpoint addresses.
      const before = { n: count(m, 'partial'), s: sum(m, 'partial') };
      await client.request('PUT', `${slicePath}/svc-0`, { body: { ...sliceBody(0, 7), metadata: { ...sliceBody(0).metadata } } });
      while (count(m, 'partial') === before.n) {
        await sleep(50);
        m = await metrics();
      }
      const partial = (sum(m, 'partial') - before.s) / (count(m, 'partial') - before.n);
      await client.request('PUT', `${slicePath}/svc-0`, { body: sliceBody(0) });
      const rules = sumMetric(m, /^extbackend_agent_rules\{family="4"\}/);
      const rss = Number(/VmRSS:\s+(\d+)/.exec((await import('node:fs')).readFileSync(`/proc/${agent.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
      console.log(`  ${String(size).padStart(8)}  ${mode.padEnd(9)}  ${(full * 1000).toFixed(0).padStart(6)} ms   ${(partial * 1000).toFixed(1).padStart(10)} ms   ${String(rules).padStart(16)}   ${rss.toFixed(0)} MiB`);
      agent.kill('SIGTERM');
      await host.destroy();
      host = undefined;
    }
  }
  await client.close();
} finally {
  await cleanup();
}
