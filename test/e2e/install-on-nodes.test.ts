// The product as users run it: the image built here, `kubectl apply -k
// config/overlays/local` (the shipped manifests, unchanged: RBAC, securityContext,
// probes, init container), the operator Deployment and the agent DaemonSet scheduled by
// kube-scheduler onto two real nodes (kubelet + containerd), outside hosts behind the
// nodes' router, and clients in pods reaching them by DNS name and cluster IP.
//
// One cluster for the whole file, so the steps run in order and build on each other.
import { execFile } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test, { type ExecutionContext } from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { systemCommand } from '../../src/net/system-command.ts';
import { installMonitoringCrds } from '../../src/devcluster/prometheus-build.ts';
import type { LocalCluster } from '../../src/devcluster/cluster.ts';
import { kubectlAt, waitFor } from '../helpers/cluster.ts';
import { backendServer, runInHost, type RunningServer } from '../helpers/backends.ts';
import type { BackendHost } from '../helpers/netns.ts';
import { clientPodYaml, outsideHost, requestsFromPod, startNodeCluster, stopOutsideHosts, type Tally } from '../helpers/nodes.ts';

const run = promisify(execFile);
const OVERLAY = path.join(REPO_ROOT, 'config', 'overlays', 'local');
const SYSTEM = 'extbackend-system';
const NS = 'e2e';

interface World {
  cluster: LocalCluster;
  kubectl(args: string[], input?: string): Promise<string>;
  /** Outside hosts by label, with their HTTP servers. */
  hosts: Map<string, { host: BackendHost; server: RunningServer }>;
  /** A client pod per node: pod name by node name. */
  clients: Map<string, string>;
}

let world: Promise<World> | undefined;

/** The cluster; made by the first step, shared by the rest (each step builds on the one before). */
function setUp(): Promise<World> {
  world ??= (async () => {
    const cluster = await startNodeCluster(2);
    const kubectl = async (args: string[], input?: string): Promise<string> => (await kubectlAt(cluster.kubeconfig, args, input)).stdout;
    return { cluster, kubectl, hosts: new Map(), clients: new Map() };
  })();
  return world;
}

interface NodeRef {
  name: string;
  netns: string;
}

// By absolute path: under `npm test`, PATH starts with node_modules/.bin, where `nft` is
// @vercel/nft's CLI (it printed nothing and exited 0: "node-0 has no tables" in CI).
async function nodeExec(node: NodeRef, command: string, args: string[]): Promise<string> {
  return (await run(systemCommand('ip'), ['netns', 'exec', node.netns, systemCommand(command), ...args], { maxBuffer: 64 * 1024 * 1024 })).stdout;
}

/** Rules, tables and virtual servers of ours on a node (for "nothing left behind"). */
async function oursOnNode(node: NodeRef): Promise<{ iptables: string[]; nftables: string[] }> {
  const saved = (await nodeExec(node, 'iptables-save', [])) + (await nodeExec(node, 'ip6tables-save', []));
  const tables = await nodeExec(node, 'nft', ['list', 'tables']);
  return {
    iptables: saved.split('\n').filter((l) => /\bXB-/.test(l)),
    nftables: tables.split('\n').filter((l) => /\bextbackend/.test(l)),
  };
}

test.after.always(async () => {
  const w = await world?.catch(() => undefined);
  if (!w) return;
  await stopOutsideHosts(w.cluster);
  await w.cluster.stop();
});

/** A user's own overlay of one of ours (in a temp dir: kustomize takes bases by relative path only). */
async function userOverlay(t: ExecutionContext, base: string, rest: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'xb-e2e-overlay-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await writeFile(path.join(dir, 'kustomization.yaml'), `apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- ${path.relative(dir, path.join(REPO_ROOT, base))}\n${rest}`);
  return dir;
}

function share(tally: Tally, identity: string): number {
  return (tally.counts[identity] ?? 0) / Math.max(1, tally.n);
}

test.serial('apply -k config/overlays/local: the operator replicas and one agent per node become Ready', async (t) => {
  t.timeout(15 * 60_000);
  const w = await setUp();
  t.is(w.cluster.nodes.length, 2);
  // The overlay includes the monitoring component: its kinds need prometheus-operator's CRDs.
  await installMonitoringCrds((...args) => w.kubectl(args));
  await w.kubectl(['apply', '-k', OVERLAY]);
  const started = Date.now();
  await w.kubectl(['-n', SYSTEM, 'rollout', 'status', 'deployment/extbackend-operator', '--timeout=180s']);
  await w.kubectl(['-n', SYSTEM, 'rollout', 'status', 'daemonset/extbackend-agent', '--timeout=180s']);
  t.log(`apply -k to all pods Ready: ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const pods = JSON.parse(await w.kubectl(['-n', SYSTEM, 'get', 'pods', '-o', 'json'])) as {
    items: { metadata: { name: string; labels: Record<string, string> }; spec: { nodeName: string }; status: { phase: string } }[];
  };
  const agents = pods.items.filter((p) => p.metadata.labels['app.kubernetes.io/name'] === 'extbackend-agent');
  t.deepEqual(agents.map((p) => p.spec.nodeName).sort(), ['node-0', 'node-1']);
  t.is(pods.items.filter((p) => p.metadata.labels['app.kubernetes.io/name'] === 'extbackend-operator' && p.status.phase === 'Running').length, 2);
  // The init container set what the agent needs on the node (it runs before the agent, as root).
  for (const node of w.cluster.nodes) t.is((await nodeExec(node, 'sysctl', ['-n', 'net.ipv4.ip_forward'])).trim(), '1');

  // Client pods, one per node, scheduled by kube-scheduler.
  await w.kubectl(['create', 'namespace', NS]);
  for (const node of w.cluster.nodes) {
    const name = `client-${node.name}`;
    await w.kubectl(['apply', '-f', '-'], clientPodYaml(NS, name, node.name));
    w.clients.set(node.name, name);
  }
  await w.kubectl(['-n', NS, 'wait', '--for=condition=Ready', 'pod', '--all', '--timeout=120s']);
  const memory = await podMemory(w);
  t.log(`pod memory (working set, kubelet's summary): ${memory}`);
});

/** Each running pod's memory as kubelet reports it, in MiB. */
/** What to look at when a node's rules are not as expected: each agent pod's view of the tables, its recent log (and its previous container's), and the node's tables. */
async function agentDiagnostics(w: World, node: NodeRef): Promise<string> {
  const pods = (await w.kubectl(['-n', SYSTEM, 'get', 'pods', '-l', 'app.kubernetes.io/name=extbackend-agent', '-o', `jsonpath={range .items[?(@.spec.nodeName=="${node.name}")]}{.metadata.name} {.status.containerStatuses[0].restartCount}{"\\n"}{end}`])).trim();
  const parts = [`${node.name} agent pods (name, restarts): ${pods || 'none'}`, `nft list tables: ${await nodeExec(node, 'nft', ['list', 'tables']).catch((err: Error) => err.message)}`];
  for (const line of pods.split('\n').filter(Boolean)) {
    const pod = line.split(' ')[0]!;
    parts.push(`${pod} sees: ${(await w.kubectl(['-n', SYSTEM, 'exec', pod, '-c', 'agent', '--', 'nft', 'list', 'tables']).catch((err: Error) => err.message)).trim() || 'no tables'}`);
    for (const previous of [false, true]) {
      const logs = await w.kubectl(['-n', SYSTEM, 'logs', pod, '-c', 'agent', '--tail=40', ...(previous ? ['--previous'] : [])]).catch(() => '');
      if (logs) parts.push(`--- ${pod}${previous ? ' (previous container)' : ''}:\n${logs}`);
    }
  }
  return parts.join('\n');
}

async function podMemory(w: World): Promise<string> {
  const parts: string[] = [];
  for (const node of w.cluster.nodes) {
    const summary = JSON.parse(await w.kubectl(['get', '--raw', `/api/v1/nodes/${node.name}/proxy/stats/summary`])) as {
      pods?: { podRef: { name: string; namespace: string }; memory?: { workingSetBytes?: number; rssBytes?: number } }[];
    };
    for (const p of summary.pods ?? []) {
      if (p.podRef.namespace !== SYSTEM) continue;
      parts.push(`${p.podRef.name} ${((p.memory?.workingSetBytes ?? 0) / 2 ** 20).toFixed(0)} MiB`);
    }
  }
  return parts.join(', ');
}

test.serial('pods on both nodes reach outside hosts by DNS name and cluster IP: spread, failover after a killed host, topologyKeys', async (t) => {
  t.timeout(10 * 60_000);
  const w = await setUp();
  // Three outside hosts: one in zone-a, two in zone-b (node-0 is in zone-a, node-1 in zone-b).
  for (const label of ['web-a1', 'web-b1', 'web-b2']) {
    const host = await outsideHost(w.cluster, label);
    w.hosts.set(label, { host, server: await backendServer(host, 'http', 8080) });
  }
  const ipOf = (label: string): string => w.hosts.get(label)!.host.ip;
  const idOf = (label: string): string => w.hosts.get(label)!.host.name;
  const zoneOf = (label: string): string => (label.includes('-a') ? 'zone-a' : 'zone-b');
  const addresses = ['web-a1', 'web-b1', 'web-b2'].map((l) => ({ ip: ipOf(l), zone: zoneOf(l) }));
  const health = { type: 'tcp', periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 2 };
  await w.kubectl(['apply', '-f', '-'], JSON.stringify({
    apiVersion: 'v1',
    kind: 'List',
    items: [
      { apiVersion: 'extbackend.io/v1alpha1', kind: 'ExternalBackend', metadata: { name: 'web', namespace: NS }, spec: { addresses, ports: [{ name: 'http', port: 80, targetPort: 8080 }], healthCheck: health } },
      {
        apiVersion: 'extbackend.io/v1alpha1',
        kind: 'ExternalBackend',
        metadata: { name: 'web-zonal', namespace: NS },
        spec: { addresses, ports: [{ name: 'http', port: 80, targetPort: 8080 }], service: { topologyKeys: ['topology.kubernetes.io/zone', '*'] }, healthCheck: health },
      },
    ],
  }));
  for (const name of ['web', 'web-zonal']) {
    await waitFor(`${name} Ready 3/3`, async () => (await w.kubectl(['-n', NS, 'get', 'externalbackend', name, '-o', 'jsonpath={.status.ready}'])) === '3/3', { timeoutMs: 60_000 });
  }
  const clusterIP = (await w.kubectl(['-n', NS, 'get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).trim();

  for (const node of w.cluster.nodes) {
    const pod = w.clients.get(node.name)!;
    for (const url of [`http://web.${NS}/`, `http://web.${NS}.svc.cluster.local/`, `http://${clusterIP}/`]) {
      const tally = await requestsFromPod(w.cluster.kubeconfig, NS, pod, { url, count: 60 });
      t.deepEqual(tally.errors, {}, `${node.name} ${url}`);
      // Spread: every host answers a fair share (1/3 expected; > 10 % rules out a stuck choice).
      for (const label of ['web-a1', 'web-b1', 'web-b2']) t.true(share(tally, idOf(label)) > 0.1, `${node.name} ${url}: ${JSON.stringify(tally.counts)}`);
    }
    // topologyKeys: the pod's node zone first.
    const zonal = await requestsFromPod(w.cluster.kubeconfig, NS, pod, { url: `http://web-zonal.${NS}/`, count: 40 });
    t.deepEqual(zonal.errors, {});
    const sameZone = ['web-a1', 'web-b1', 'web-b2'].filter((l) => zoneOf(l) === node.zone).map(idOf);
    t.deepEqual(Object.keys(zonal.counts).sort(), sameZone.sort(), `${node.name} (${node.zone}) answered by ${JSON.stringify(zonal.counts)}`);
  }

  // Kill the zone-a host: web spreads over the other two; zone-a's node falls through to "*".
  await w.hosts.get('web-a1')!.server.stop();
  await waitFor('web Ready 2/3', async () => (await w.kubectl(['-n', NS, 'get', 'externalbackend', 'web', '-o', 'jsonpath={.status.ready}'])) === '2/3', { timeoutMs: 60_000 });
  await waitFor('web-zonal Ready 2/3', async () => (await w.kubectl(['-n', NS, 'get', 'externalbackend', 'web-zonal', '-o', 'jsonpath={.status.ready}'])) === '2/3', { timeoutMs: 60_000 });
  for (const node of w.cluster.nodes) {
    const pod = w.clients.get(node.name)!;
    for (const name of ['web', 'web-zonal']) {
      // The agent may take a sync to follow the slice: wait for the first clean batch.
      const tally = await waitFor(`${node.name}: ${name} without the killed host`, async () => {
        const r = await requestsFromPod(w.cluster.kubeconfig, NS, pod, { url: `http://${name}.${NS}/`, count: 30 });
        return Object.keys(r.errors).length === 0 && !r.counts[idOf('web-a1')] ? r : undefined;
      }, { timeoutMs: 30_000 });
      t.deepEqual(Object.keys(tally.counts).sort(), [idOf('web-b1'), idOf('web-b2')].sort(), `${node.name} ${name}`);
    }
  }
  await w.hosts.get('web-a1')!.server.start();
});

test.serial('the seeds\' case: a pod writes and reads a three-member etcd outside the cluster through etcd-k8s.kube-system:2379', async (t) => {
  t.timeout(5 * 60_000);
  const w = await setUp();
  const members = await Promise.all(['etcd-1', 'etcd-2', 'etcd-3'].map((l) => outsideHost(w.cluster, l)));
  const cluster = members.map((m, i) => `etcd-${i + 1}=http://${m.ip}:2380`).join(',');
  const etcdDirs = await mkdtemp(path.join(os.tmpdir(), 'xb-e2e-etcd-'));
  t.teardown(() => rm(etcdDirs, { recursive: true, force: true }));
  await Promise.all(
    members.map((m, i) =>
      runInHost(m, `etcd-${i + 1}`, w.cluster.build.bin('etcd'), [
        `--name=etcd-${i + 1}`,
        `--data-dir=${path.join(etcdDirs, String(i))}`,
        `--listen-client-urls=http://${m.ip}:2379`,
        `--advertise-client-urls=http://${m.ip}:2379`,
        `--listen-peer-urls=http://${m.ip}:2380`,
        `--initial-advertise-peer-urls=http://${m.ip}:2380`,
        `--initial-cluster=${cluster}`,
        '--initial-cluster-state=new',
      ]),
    ),
  );
  await w.kubectl(['apply', '-f', '-'], JSON.stringify({
    apiVersion: 'extbackend.io/v1alpha1',
    kind: 'ExternalBackend',
    metadata: { name: 'etcd-k8s', namespace: 'kube-system' },
    spec: {
      addresses: members.map((m) => ({ ip: m.ip })),
      ports: [{ name: 'client', port: 2379 }],
      healthCheck: { type: 'http', http: { path: '/health' }, periodSeconds: 2, failureThreshold: 2 },
    },
  }));
  await waitFor('etcd-k8s Ready 3/3', async () => (await w.kubectl(['-n', 'kube-system', 'get', 'externalbackend', 'etcd-k8s', '-o', 'jsonpath={.status.ready}'])) === '3/3', { timeoutMs: 60_000 });
  // etcd's JSON gateway (/v3/kv/put, /v3/kv/range), keys and values in base64.
  const script = `
const b64 = (s) => Buffer.from(s).toString('base64');
const post = async (p, body) => (await fetch('http://etcd-k8s.kube-system:2379' + p, { method: 'POST', body: JSON.stringify(body) })).json();
(async () => {
  await post('/v3/kv/put', { key: b64('/e2e/greeting'), value: b64('hello from a pod') });
  const r = await post('/v3/kv/range', { key: b64('/e2e/greeting') });
  console.log(Buffer.from(r.kvs[0].value, 'base64').toString());
})();`;
  const pod = w.clients.get('node-0')!;
  const out = await kubectlAt(w.cluster.kubeconfig, ['-n', NS, 'exec', pod, '--', 'node', '-e', script]);
  t.is(out.stdout.trim(), 'hello from a pod');
  // And the value is really in the outside etcd cluster (read from another member, from the host).
  const direct = await fetch(`http://${members[2]!.ip}:2379/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from('/e2e/greeting').toString('base64') }) });
  const kvs = ((await direct.json()) as { kvs: { value: string }[] }).kvs;
  t.is(Buffer.from(kvs[0]!.value, 'base64').toString(), 'hello from a pod');
});

test.serial('a rolling update of the agent from iptables to nftables drops no request, and leaves no iptables rules of ours', async (t) => {
  t.timeout(8 * 60_000);
  const w = await setUp();
  for (const node of w.cluster.nodes) t.true((await oursOnNode(node)).iptables.length > 0, `${node.name} has our iptables rules before`);
  // A user's overlay on top of the local one switches the mode.
  const overlay = await userOverlay(t, 'config/overlays/local', `configMapGenerator:\n- name: extbackend-agent\n  namespace: ${SYSTEM}\n  behavior: merge\n  literals: [proxy-mode=nftables]\n`);
  // Clients on both nodes, a new connection every 20 ms, throughout the rollout.
  // Long enough for the rollout on a loaded CI machine (27 s alone, 114 s beside other suites at load 28).
  const LOOP_MS = 180_000;
  const loopStart = Date.now();
  // By cluster IP: what is under test is our rules. By name, each request also asks CoreDNS
  // through kube-proxy's rules over UDP, where one lost packet waits out resolv.conf's 5 s
  // (the earlier step covers names).
  const clusterIP = (await w.kubectl(['-n', NS, 'get', 'service', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).trim();
  const loops = w.cluster.nodes.map((node) => requestsFromPod(w.cluster.kubeconfig, NS, w.clients.get(node.name)!, { url: `http://${clusterIP}/`, durationMs: LOOP_MS, intervalMs: 20 }));
  // Should a step below fail first, the loops' ends are no one's to handle: keep them quiet.
  for (const loop of loops) loop.catch(() => undefined);
  await new Promise((r) => setTimeout(r, 3000));
  await w.kubectl(['apply', '-k', overlay]);
  await w.kubectl(['-n', SYSTEM, 'rollout', 'status', 'daemonset/extbackend-agent', '--timeout=180s']);
  const rolledOutAfter = Date.now() - loopStart;
  t.log(`rollout done ${(rolledOutAfter / 1000).toFixed(1)} s into the clients' ${LOOP_MS / 1000} s`);
  // The clients were still sending when the new agents had taken over, and a while after.
  t.true(rolledOutAfter < LOOP_MS - 10_000, 'the rollout finished inside the clients\' loop');
  const tallies = await Promise.all(loops);
  for (const [i, tally] of tallies.entries()) {
    t.log(`${w.cluster.nodes[i]!.name}: ${tally.n} requests, failed: ${JSON.stringify(tally.errors)}`);
    t.deepEqual(tally.errors, {}, w.cluster.nodes[i]!.name);
    t.true(tally.n > 100);
  }
  t.log(`pod memory after the rollout: ${await podMemory(w)}`);
  for (const node of w.cluster.nodes) {
    const ours = await waitFor(`${node.name}: iptables leftovers removed`, async () => {
      const o = await oursOnNode(node);
      return o.iptables.length === 0 ? o : undefined;
    }, { timeoutMs: 30_000 });
    if (!ours.nftables.length) t.log(await agentDiagnostics(w, node));
    t.true(ours.nftables.length > 0, `${node.name} is programmed with nftables now`);
  }
});

test.serial('deleting the leader operator pod: the other replica takes over within the lease duration and publishes an edit', async (t) => {
  t.timeout(5 * 60_000);
  const w = await setUp();
  const holder = async (): Promise<string> => (await w.kubectl(['-n', SYSTEM, 'get', 'lease', 'extbackend-operator', '-o', 'jsonpath={.spec.holderIdentity}'])).trim();
  const leader = await waitFor('a leader', async () => (await holder()) || undefined);
  const deleted = Date.now();
  await w.kubectl(['-n', SYSTEM, 'delete', 'pod', leader, '--wait=false']);
  const LEASE_DURATION_S = 15; // config/operator.yaml: the operator's --leader-elect defaults (15 s / 10 s / 2 s)
  const next = await waitFor('another replica to hold the lease', async () => {
    const h = await holder();
    return h && h !== leader ? h : undefined;
  }, { timeoutMs: (LEASE_DURATION_S + 5) * 1000 });
  t.log(`leader ${leader} deleted; ${next} holds the lease after ${((Date.now() - deleted) / 1000).toFixed(1)} s`);
  // An edit right after: a fourth address is published by the new leader.
  const extra = await outsideHost(w.cluster, 'web-c1');
  await backendServer(extra, 'http', 8080);
  await w.kubectl(['-n', NS, 'patch', 'externalbackend', 'web', '--type=json', '-p', JSON.stringify([{ op: 'add', path: '/spec/addresses/-', value: { ip: extra.ip } }])]);
  await waitFor('the new address in the slice', async () => (await w.kubectl(['-n', NS, 'get', 'endpointslices', '-l', 'kubernetes.io/service-name=web', '-o', 'jsonpath={.items[*].endpoints[*].addresses[*]}'])).includes(extra.ip), { timeoutMs: 30_000 });
  t.pass();
});

test.serial('kubectl delete -k removes the pods, and `agent --cleanup` as documented leaves nothing of ours on the nodes', async (t) => {
  t.timeout(5 * 60_000);
  const w = await setUp();
  // The agents go first: deleting the backends while an agent still runs would (rightly)
  // remove their rules, and the check below is that an agent's exit leaves them.
  await w.kubectl(['-n', SYSTEM, 'delete', 'daemonset', 'extbackend-agent', '--wait=true', '--timeout=120s']);
  await waitFor('no agent pods', async () => (await w.kubectl(['-n', SYSTEM, 'get', 'pods', '-l', 'app.kubernetes.io/name=extbackend-agent', '-o', 'name'])).trim() === '', { timeoutMs: 60_000 });
  // The rules stay when the agent goes (it never flushes on exit)...
  for (const node of w.cluster.nodes) {
    const ours = await oursOnNode(node);
    if (!ours.iptables.length && !ours.nftables.length) t.log(await agentDiagnostics(w, node));
    t.true(ours.iptables.length + ours.nftables.length > 0, `${node.name} keeps its rules`);
  }
  await w.kubectl(['delete', 'namespace', NS, '--wait=false']);
  await w.kubectl(['delete', '-k', OVERLAY, '--wait=true', '--timeout=120s', '--ignore-not-found']);
  await waitFor('no agent or operator pods', async () => (await w.kubectl(['get', 'pods', '-A', '-l', 'app.kubernetes.io/part-of=extbackend', '-o', 'name'])).trim() === '', { timeoutMs: 60_000 });
  // ...until `extbackend agent --cleanup` runs on every node, as README says: `kubectl apply -k config/cleanup`
  // with the image set as for the install (here in an overlay, like the local one), then delete it.
  const cleanup = await userOverlay(t, 'config/cleanup', 'images:\n- {name: ghcr.io/extbackend/extbackend, newName: localhost/extbackend, newTag: dev}\n');
  await w.kubectl(['apply', '-k', cleanup]);
  await w.kubectl(['-n', 'kube-system', 'rollout', 'status', 'daemonset/extbackend-agent-cleanup', '--timeout=120s']);
  await w.kubectl(['delete', '-k', cleanup, '--wait=true', '--timeout=60s']);
  for (const node of w.cluster.nodes) {
    let left: unknown;
    await waitFor(`${node.name}: nothing of ours`, async () => {
      const o = await oursOnNode(node);
      left = o;
      return o.iptables.length === 0 && o.nftables.length === 0;
    }, { timeoutMs: 60_000 }).catch((err: Error) => {
      throw new Error(`${err.message}\nleft: ${JSON.stringify(left)}`);
    });
  }
  t.pass();
});

test.serial('stopping the cluster leaves no process, mount, cgroup, network namespace or file of its nodes behind', async (t) => {
  t.timeout(3 * 60_000);
  const w = await setUp();
  const { workDir } = w.cluster;
  const id = path.basename(workDir);
  await w.cluster.stop();
  const processes = (await run('ps', ['-eo', 'pid,args'])).stdout.split('\n').filter((l) => l.includes(workDir));
  t.deepEqual(processes, []);
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').filter((l) => l.includes(workDir));
  t.deepEqual(mounts, []);
  const cgroups = readdirSync('/sys/fs/cgroup/pids').filter((d) => d.includes(id.replace('extbackend-cluster-', '')));
  t.deepEqual(cgroups, []);
  const namespaces = (await run('ip', ['netns', 'list'])).stdout.split('\n').filter((l) => l.startsWith('xbk-'));
  t.deepEqual(namespaces, []);
  t.false(existsSync(workDir));
  t.false(existsSync(path.join(os.tmpdir(), 'extbackend-node-network.json')));
});
