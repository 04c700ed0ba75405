// Benchmark: the node agent at 1 000, 5 000 and 10 000 Services x 10 endpoints
// (selectorless Services and hand-written EndpointSlices, both with the proxy label) against
// the local control plane, side by side with kube-proxy (built by the control-plane
// module) over an equal set of Services and slices without the label (the only ones it
// serves). Both sets are in the cluster at once: each proxy's RSS is with the other's
// slices present, as a node's is with the cluster's pod Services.
// For each size, mode and proxy, a fresh process in its own network namespace: full
// sync time, one-Service-change sync time (median and max of five changes), rules (and
// map elements), RSS, and first-packet connect latency: sequential new TCP connections
// from the node to a probe Service (sorted last) whose one endpoint is a server on the
// host end of the node's veth, so each connection's first packet walks the proxy's rules.
// Needs root. Usage: node bench/agent.ts [sizes=1000,5000,10000] [modes=iptables,nftables] [proxies=ours,kube-proxy]
// Environment: BENCH_FULL_SYNC_TIMEOUT (s, default 600), BENCH_FULL_SYNC_RUNS (fresh starts the
// first full sync is the median of, default 1), BENCH_AGENT_LOG=1 (our agent's log to stderr),
// BENCH_METRICS_OUT=file (our agent's last /metrics page, to compare names).
import { execFileSync } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { startLocalCluster } from '../src/devcluster/cluster.ts';
import { kubeconfigViaAddress } from '../src/devcluster/pki.ts';
import { KubeClient, loadKubeConfig } from '../src/runtime/kube-client.ts';
import { createBackendHost, type BackendHost } from '../test/helpers/netns.ts';
import { scrapeMetrics, sumMetric, withCleanup } from './harness.ts';

const sizes = (process.argv[2] ?? '1000,5000,10000').split(',').map(Number);
const modes = (process.argv[3] ?? 'iptables,nftables').split(',');
const proxies = (process.argv[4] ?? 'ours,kube-proxy').split(',');
const kpNs = 'bench-kube-proxy';
// kube-proxy runs iptables/nft from PATH: never npm's node_modules/.bin (an npm package ships a binary named `nft`).
const systemPath = (process.env.PATH ?? '').split(':').filter((d) => !d.includes('node_modules')).join(':');
const ns = 'bench-agent';
const ENDPOINTS = 10;
const PROBE_PORT = 18080;
const CHANGES = 5;
/** How long to wait for a proxy's first full sync ($BENCH_FULL_SYNC_TIMEOUT seconds, default 600). */
const FULL_SYNC_TIMEOUT_S = Number(process.env.BENCH_FULL_SYNC_TIMEOUT ?? 600);
/** How many fresh starts the first full sync is the median of ($BENCH_FULL_SYNC_RUNS, default 1). */
const FULL_SYNC_RUNS = Math.max(1, Number(process.env.BENCH_FULL_SYNC_RUNS ?? 1));
/** BENCH_AGENT_LOG=1: our agent logs at info to stderr (where each sync's time went). */
const AGENT_LOG = process.env.BENCH_AGENT_LOG === '1';
const METRICS_OUT = process.env.BENCH_METRICS_OUT;

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
  kubectl('create', 'namespace', kpNs);
  const client = await KubeClient.fromKubeConfig(loadKubeConfig(cluster.kubeconfig));
  const slicePath = (space: string): string => `/apis/discovery.k8s.io/v1/namespaces/${space}/endpointslices`;
  /** Our label on our Services and their slices (the agent watches only those slices; kube-proxy only the others). */
  const proxyLabel = (space: string): Record<string, string> => (space === ns ? { 'service.kubernetes.io/service-proxy-name': 'extbackend' } : {});
  const sliceBody = (i: number, salt = 0, space = ns) => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: `svc-${i}`, namespace: space, labels: { 'kubernetes.io/service-name': `svc-${i}`, 'endpointslice.kubernetes.io/managed-by': 'bench', ...proxyLabel(space) } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints: Array.from({ length: ENDPOINTS }, (_, e) => ({ addresses: [endpointIP(i, e, salt)], conditions: { ready: true } })),
  });
  const created: Record<string, number> = { [ns]: 0, [kpNs]: 0 };
  const grow = async (space: string, to: number): Promise<void> => {
    let next = created[space]!;
    const labels = proxyLabel(space);
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next < to) {
          const i = next++;
          await client.create(`/api/v1/namespaces/${space}/services`, { metadata: { name: `svc-${i}`, labels }, spec: { ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
          await client.create(slicePath(space), sliceBody(i, 0, space));
        }
      }),
    );
    created[space] = to;
  };

  // The probe Service: its endpoint follows each run's node namespace (the host end of its veth).
  const probeSlice = (space: string, ip: string) => ({
    apiVersion: 'discovery.k8s.io/v1',
    kind: 'EndpointSlice',
    metadata: { name: 'zz-probe', namespace: space, labels: { 'kubernetes.io/service-name': 'zz-probe', 'endpointslice.kubernetes.io/managed-by': 'bench', ...proxyLabel(space) } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: PROBE_PORT, protocol: 'TCP' }],
    endpoints: [{ addresses: [ip], conditions: { ready: true } }],
  });
  const probeVip: Record<string, string> = {};
  for (const space of [ns, kpNs]) {
    const labels = proxyLabel(space);
    const svc = await client.create<{ spec: { clusterIP: string } }>(`/api/v1/namespaces/${space}/services`, { metadata: { name: 'zz-probe', labels }, spec: { ports: [{ name: 'http', port: 80, targetPort: PROBE_PORT }] } });
    probeVip[space] = svc.spec.clusterIP;
    await client.create(slicePath(space), probeSlice(space, '198.18.255.254'));
  }
  const connectLatency = async (h: BackendHost, vip: string): Promise<{ p50Us: number; p99Us: number; failures: number }> => {
    const script = path.join(REPO_ROOT, 'bench', 'connect-latency.ts');
    // Wait until the probe Service answers (programmed), then measure.
    for (let i = 0; i < 100; i++) {
      const r = JSON.parse(await h.exec(process.execPath, ['--disable-warning=ExperimentalWarning', script, vip, '80', '1'])) as { failures: number };
      if (!r.failures) break;
      await sleep(200);
    }
    return JSON.parse(await h.exec(process.execPath, ['--disable-warning=ExperimentalWarning', script, vip, '80', '300'])) as { p50Us: number; p99Us: number; failures: number };
  };

  const agentKubeconfig = path.join(path.dirname(cluster.kubeconfig), 'bench-agent.kubeconfig');
  console.log(`agent benchmark: Services x ${ENDPOINTS} endpoints, a fresh proxy per size, mode and proxy (Kubernetes ${cluster.version})`);
  console.log('  services  mode      proxy        full sync   one-change sync (median / max of 5)   rules(+elements)        RSS   connect p50 / p99');
  const results = new Map<string, { full: number; partial: number }>();
  for (const size of sizes) {
    if (proxies.includes('ours')) await grow(ns, size);
    if (proxies.includes('kube-proxy')) await grow(kpNs, size);
    for (const mode of modes) {
      for (const proxy of proxies) {
        const ours = proxy === 'ours';
        const space = ours ? ns : kpNs;
        // kube-proxy syncs each IP family on its own (the node namespace has IPv6 too): only its IPv4 syncs count.
        const names = ours
          ? { full: 'extbackend_agent_sync_duration_seconds_%{kind="full"}', partial: 'extbackend_agent_sync_duration_seconds_%{kind="partial"}' }
          : { full: 'kubeproxy_sync_full_proxy_rules_duration_seconds_%{ip_family="IPv4"}', partial: 'kubeproxy_sync_partial_proxy_rules_duration_seconds_%{ip_family="IPv4"}' };
        const metric = (m: string, which: 'full' | 'partial', part: 'count' | 'sum'): number => {
          const name = names[which].replace('%', part).replace(/[{}"=]/g, (c) => `\\${c}`);
          return sumMetric(m, new RegExp(`^${name}(\\{[^}]*\\})? `));
        };
        /** A fresh proxy in a fresh node namespace, up to its first full sync; undefined if none came within the timeout. */
        const launch = async () => {
          const h = (host = await createBackendHost());
          await client.request('PUT', `${slicePath(space)}/zz-probe`, { body: probeSlice(space, h.hostIP) });
          const probeServer = net.createServer((c) => c.destroy());
          await new Promise<void>((r) => probeServer.listen(PROBE_PORT, h.hostIP, r));
          writeFileSync(agentKubeconfig, kubeconfigViaAddress(cluster.kubeconfigYaml, h.hostIP), { mode: 0o600 });
          const child = ours
            ? h.spawn(process.execPath, ['--disable-warning=ExperimentalWarning', path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'agent', '--kubeconfig', agentKubeconfig, '--node-name', 'bench-node', '--proxy-mode', mode, '--min-sync-period', '100ms', '--sync-period', '1h', '--http-address', `${h.ip}:10266`], { env: { ...process.env, EXTBACKEND_LOG_LEVEL: AGENT_LOG ? 'info' : 'warn' } })
            : h.spawn(cluster.build.bin('kube-proxy'), ['--kubeconfig', agentKubeconfig, '--hostname-override', 'bench-node', '--proxy-mode', mode, '--metrics-bind-address', `${h.ip}:10266`, '--healthz-bind-address', `${h.ip}:10256`, '--conntrack-max-per-core', '0', '--iptables-min-sync-period', '100ms', '--iptables-sync-period', '1h', '--iptables-localhost-nodeports=false', '--v', '0'], { env: { ...process.env, PATH: systemPath } });
          let log = '';
          child.stdout?.resume();
          if (AGENT_LOG && ours) child.stderr?.pipe(process.stderr);
          child.stderr?.on('data', (d: Buffer) => (log = (log + d.toString()).slice(-4000)));
          child.once('exit', (code) => code && console.error(`${proxy} exited (${code}):\n${log}`));
          const metrics = (): Promise<string> => scrapeMetrics(`http://${h.ip}:10266/metrics`);
          const stop = async (): Promise<void> => {
            child.kill('SIGTERM');
            probeServer.close();
            await h.destroy();
            host = undefined;
          };
          let m = await metrics();
          const fullDeadline = Date.now() + FULL_SYNC_TIMEOUT_S * 1000;
          while (metric(m, 'full', 'count') < 1 && Date.now() < fullDeadline) {
            await sleep(200);
            m = await metrics();
          }
          if (metric(m, 'full', 'count') < 1) {
            await stop();
            return undefined;
          }
          await sleep(1500); // let the follow-up syncs of the initial burst settle
          m = await metrics();
          // A proxy that made several full syncs in that time is measured by their mean.
          return { h, child, metrics, m, stop, full: metric(m, 'full', 'sum') / metric(m, 'full', 'count'), fullCount: metric(m, 'full', 'count') };
        };
        // The first full sync is one measurement on a shared machine: with BENCH_FULL_SYNC_RUNS=N it is
        // taken from N fresh starts (the median counts); the last start goes on to the other measurements.
        const fulls: number[] = [];
        let run: Awaited<ReturnType<typeof launch>>;
        for (let i = 0; i < FULL_SYNC_RUNS; i++) {
          run = await launch();
          if (!run) break;
          fulls.push(run.full);
          if (i < FULL_SYNC_RUNS - 1) await run.stop();
        }
        if (!run) {
          // kube-proxy's iptables mode at 10 000 Services has not finished one in 19 minutes here.
          console.log(`  ${String(size).padStart(8)}  ${mode.padEnd(8)}  ${proxy.padEnd(10)}  no full sync within ${FULL_SYNC_TIMEOUT_S} s`);
          results.set(`${size}/${mode}/${proxy}`, { full: Infinity, partial: Infinity });
          continue;
        }
        const { h, child, metrics, fullCount } = run;
        let m = run.m;
        const full = [...fulls].sort((x, y) => x - y)[Math.floor(fulls.length / 2)]!;
        // Five one-Service changes (new endpoints for svc-0), each timed by the proxy's own metric: median and max.
        const changes: number[] = [];
        for (let k = 1; k <= CHANGES; k++) {
          const before = { n: metric(m, 'partial', 'count'), s: metric(m, 'partial', 'sum') };
          await client.request('PUT', `${slicePath(space)}/svc-0`, { body: sliceBody(0, 7 * k, space) });
          const deadline = Date.now() + 60_000;
          while (metric(m, 'partial', 'count') === before.n && Date.now() < deadline) {
            await sleep(50);
            m = await metrics();
          }
          await sleep(300); // let a sync that the same change started settle too
          m = await metrics();
          changes.push((metric(m, 'partial', 'sum') - before.s) / Math.max(1, metric(m, 'partial', 'count') - before.n));
        }
        changes.sort((x, y) => x - y);
        const partial = changes[Math.floor(CHANGES / 2)]!;
        const partialMax = changes[CHANGES - 1]!;
        await client.request('PUT', `${slicePath(space)}/svc-0`, { body: sliceBody(0, 0, space) });
        // kube-proxy's rule-count metrics differ by mode and release: only ours are shown.
        if (ours && METRICS_OUT) writeFileSync(METRICS_OUT, m);
        const rules = ours ? String(sumMetric(m, /^extbackend_agent_rules\{family="4"\}/)) : '-';
        const latency = await connectLatency(h, probeVip[space]!);
        const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
        results.set(`${size}/${mode}/${proxy}`, { full, partial });
        const lat = latency.failures ? `${latency.failures} of 300 failed` : `${latency.p50Us} / ${latency.p99Us} µs`;
        // A mean over several full syncs says so: "(mean of 3)"; a median of fresh starts lists them.
        const fullText = `${(full * 1000).toFixed(0).padStart(7)} ms${fullCount > 1 ? ` (mean of ${fullCount})` : ''}`;
        const runsText = fulls.length > 1 ? `   (first full sync of ${fulls.length} fresh starts: ${fulls.map((f) => (f * 1000).toFixed(0)).join(', ')} ms; median shown)` : '';
        console.log(`  ${String(size).padStart(8)}  ${mode.padEnd(8)}  ${proxy.padEnd(10)}  ${fullText}   ${(partial * 1000).toFixed(1).padStart(10)} / ${(partialMax * 1000).toFixed(1)} ms   ${rules.padStart(16)}   ${rss.toFixed(0).padStart(5)} MiB   ${lat}${runsText}`);
        await run.stop();
      }
      const o = results.get(`${size}/${mode}/ours`);
      const k = results.get(`${size}/${mode}/kube-proxy`);
      const ratio = (a: number, b: number): string => (Number.isFinite(b) ? (a / b).toFixed(2) : 'kube-proxy did not finish');
      if (o && k) console.log(`  ${String(size).padStart(8)}  ${mode.padEnd(8)}  ours/kube-proxy  full ${ratio(o.full, k.full)}, one change ${ratio(o.partial, k.partial)}`);
    }
  }
  await client.close();
} finally {
  await cleanup();
}
