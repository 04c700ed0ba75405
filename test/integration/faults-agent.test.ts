// The fault suite, agent side: real agents (iptables on one lab node, nftables on the
// other) against a control plane of this file's own (it is killed and restarted here, so
// the shared one is left alone), real traffic from clients inside the nodes making a new
// connection every 20 ms and counting failures. Where the rules should carry traffic the
// expected count is zero; after each fault the agents converge within a stated bound.
//   1. kube-apiserver SIGKILLed for 60 s, while one agent is also cut off from the API,
//      a Service is deleted and etcd compacted (its watch comes back to a 410: relist).
//   2. etcd SIGKILLed and restarted.
//   3. an agent SIGKILLed under load and started again.
//   4. partial and full drift of the iptables and nftables rules under load.
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import test, { type ExecutionContext } from 'ava';
import { svcChain } from '../../src/agent/iptables/render.ts';
import { shardTable } from '../../src/agent/nftables/render.ts';
import { startLocalCluster, type LocalCluster } from '../../src/devcluster/cluster.ts';
import { kubeconfigViaAddress } from '../../src/devcluster/pki.ts';
import { CLIENT, NODE_ARGS, SERVER, spawnLabAgent } from '../helpers/agent-scenario.ts';
import { waitForOutput } from '../helpers/backends.ts';
import { kubectlAt, waitFor } from '../helpers/cluster.ts';
import { createLab, type Lab, type LabHost } from '../helpers/lab.ts';

const NS = 'faults';
/** The agents' full resync period: drift is repaired within one (plus the sync itself). */
const SYNC_PERIOD_S = 5;
/** After the API server (or etcd) is back: informers reconnect with backoff capped at 30 s... */
const RECONNECT_BOUND_MS = 45_000;
/** ...and drift is repaired by the next full sync. */
const DRIFT_BOUND_MS = (SYNC_PERIOD_S + 10) * 1000;

type Mode = 'iptables' | 'nftables';
const MODES: Mode[] = ['iptables', 'nftables'];

interface ClientResult {
  requests: number;
  answers: Record<string, number>;
  failures: number;
  errors: Record<string, number>;
}

interface World {
  cluster: LocalCluster;
  lab: Lab;
  kubeconfig: string;
  nodes: Record<Mode, LabHost>;
  agents: Map<Mode, ChildProcess>;
  agentLog: string[];
  backends: LabHost[];
  vips: Map<string, string>;
}

// The world outlives single tests: lab teardowns run after the last one.
const teardowns: (() => Promise<void> | void)[] = [];
let world: World | undefined;

const kubectl = (w: World, args: string[], input?: string) => kubectlAt(w.cluster.kubeconfig, args, input);

function serviceYaml(name: string): string {
  return `apiVersion: v1
kind: Service
metadata: {name: ${name}, namespace: ${NS}, labels: {service.kubernetes.io/service-proxy-name: extbackend}}
spec: {ports: [{name: http, port: 80, targetPort: 8080}]}
`;
}

function sliceYaml(name: string, hosts: LabHost[]): string {
  return `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: ${name}-1, namespace: ${NS}, labels: {kubernetes.io/service-name: ${name}, endpointslice.kubernetes.io/managed-by: faults-test, service.kubernetes.io/service-proxy-name: extbackend}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [${hosts.map((h) => `{addresses: [${h.ip}], conditions: {ready: true}}`).join(', ')}]
`;
}

async function startAgent(w: World, mode: Mode): Promise<ChildProcess> {
  const child = spawnLabAgent(w.nodes[mode], { kubeconfig: w.kubeconfig, nodeName: `node-${mode}`, mode, syncPeriodS: SYNC_PERIOD_S }, mode, w.agentLog);
  w.agents.set(mode, child);
  // A busy machine starts node slowly: wait longer than waitForOutput's 20 s.
  const from = w.agentLog.length;
  await waitFor(`the ${mode} agent's caches to sync`, () => w.agentLog.slice(from).some((l) => l.startsWith(`${mode}: `) && l.includes('caches synced')) || (child.exitCode !== null ? Promise.reject(new Error(`agent exited ${child.exitCode}`)) : false), { timeoutMs: 90_000 });
  return child;
}

async function setup(): Promise<World> {
  const shim = { teardown: (fn: () => Promise<void> | void) => void teardowns.push(fn) } as unknown as ExecutionContext;
  const cluster = await startLocalCluster();
  teardowns.push(() => cluster.stop());
  const lab = await createLab(shim);
  const kubeconfig = path.join(cluster.workDir, `agent-${randomBytes(3).toString('hex')}.kubeconfig`);
  await writeFile(kubeconfig, kubeconfigViaAddress(cluster.kubeconfigYaml, lab.hostIP), { mode: 0o600 });
  const w: World = { cluster, lab, kubeconfig, nodes: { iptables: await lab.node('ipt'), nftables: await lab.node('nft') }, agents: new Map(), agentLog: [], backends: [await lab.backend('b1'), await lab.backend('b2')], vips: new Map() };
  for (const [i, b] of w.backends.entries()) {
    const server = b.spawn(process.execPath, [...NODE_ARGS, SERVER, '--kind', 'http', '--host', b.ip, '--port', '8080', '--identity', `b${i + 1}`]);
    await waitForOutput(server, ['listening'], `server b${i + 1}`);
  }
  await kubectl(w, ['create', 'namespace', NS]);
  for (const name of ['web', 'doomed']) {
    await kubectl(w, ['apply', '-f', '-'], serviceYaml(name) + '---\n' + sliceYaml(name, w.backends));
    w.vips.set(name, (await kubectl(w, ['-n', NS, 'get', 'service', name, '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim());
  }
  for (const mode of MODES) await startAgent(w, mode);
  for (const mode of MODES) await waitForAnswers(w, mode, 'web', ['b1', 'b2']);
  return w;
}

async function request(from: LabHost, url: string, count: number, extra: string[] = []): Promise<ClientResult> {
  return JSON.parse(await from.exec(process.execPath, [...NODE_ARGS, CLIENT, '--url', url, '--count', String(count), ...extra])) as ClientResult;
}

/** A client making a new connection every 20 ms for `ms`. */
function loop(w: World, mode: Mode, service: string, ms: number): Promise<ClientResult> {
  return request(w.nodes[mode], `http://${w.vips.get(service)}/`, 0, ['--duration-ms', String(ms), '--interval-ms', '20', '--timeout-ms', '1000']);
}

/** Waits until `service` on `mode`'s node is answered by exactly `expected`; returns how long that took. */
async function waitForAnswers(w: World, mode: Mode, service: string, expected: string[], timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  await waitFor(`${mode} node: ${service} answered by ${expected.join(',')}`, async () => {
    const r = await request(w.nodes[mode], `http://${w.vips.get(service)}/`, 20, ['--timeout-ms', '300']);
    return r.failures === 0 && Object.keys(r.answers).sort().join() === expected.join();
  }, { timeoutMs, intervalMs: 200 });
  return Date.now() - started;
}

/** True when `mode`'s node has no rules for the Service's cluster IP. */
async function noRulesFor(w: World, mode: Mode, vip: string): Promise<boolean> {
  const node = w.nodes[mode];
  const listing = mode === 'iptables' ? await node.exec('iptables-save', ['-t', 'nat']) : await node.exec('nft', ['list', 'ruleset', 'ip']);
  return !listing.includes(vip);
}

async function healthz(w: World, mode: Mode): Promise<string> {
  const node = w.nodes[mode];
  return node.exec('curl', ['-s', '-m', '3', '-w', ' %{http_code}', `http://${node.ip}:10266/healthz`]);
}

function assertNoFailures(t: ExecutionContext, what: string, results: Record<string, ClientResult>): void {
  for (const [mode, r] of Object.entries(results)) {
    t.log(`${what}, ${mode} node: ${r.requests} requests, ${r.failures} failed ${r.failures ? JSON.stringify(r.errors) : ''}`);
    t.true(r.requests > 50, `${mode}: the client ran (${r.requests} requests)`);
    t.is(r.failures, 0, `${mode}: no failed request during ${what}: ${JSON.stringify(r.errors)}`);
  }
}

test.before(async () => {
  world = await setup();
});

test.after.always(async () => {
  for (const fn of teardowns.reverse()) await fn();
});

test.afterEach.always((t) => {
  if (t.passed || !world) return;
  console.error(world.agentLog.filter((l) => /"level":"(warn|error)"/.test(l)).slice(-15).join('\n'), '\n--- last lines:\n', world.agentLog.slice(-15).join('\n'));
});

test.serial('kube-apiserver killed for 60 s (one agent also cut off, a Service deleted, etcd compacted): traffic flows, then the agents converge', async (t) => {
  t.timeout(5 * 60_000);
  const w = world!;
  const cut = w.nodes.nftables;
  // Cut the nftables node's agent off the API server, both ways (a table of the test's own).
  const port = new URL(w.cluster.server).port;
  await cut.exec('nft', ['add', 'table', 'inet', 'xbcut']);
  await cut.exec('nft', ['add', 'chain', 'inet', 'xbcut', 'out', '{ type filter hook output priority -300; }']);
  await cut.exec('nft', ['add', 'chain', 'inet', 'xbcut', 'in', '{ type filter hook input priority -300; }']);
  await cut.exec('nft', ['add', 'rule', 'inet', 'xbcut', 'out', 'ip', 'daddr', w.lab.hostIP, 'tcp', 'dport', port, 'drop']);
  await cut.exec('nft', ['add', 'rule', 'inet', 'xbcut', 'in', 'ip', 'saddr', w.lab.hostIP, 'tcp', 'sport', port, 'drop']);
  // The Service goes while that agent cannot hear it; the other agent removes it.
  await kubectl(w, ['-n', NS, 'delete', 'service', 'doomed']);
  await kubectl(w, ['-n', NS, 'delete', 'endpointslice', 'doomed-1']);
  const doomed = w.vips.get('doomed')!;
  await waitFor('the iptables agent to remove the deleted Service', () => noRulesFor(w, 'iptables', doomed));
  t.false(await noRulesFor(w, 'nftables', doomed), 'the cut-off agent still has the deleted Service\'s rules');
  // Compact etcd past the deletion: resuming the old watch is impossible (410), only a relist helps.
  const rev = (await (await fetch(`${w.cluster.etcdUrl}/v3/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from('/').toString('base64') }) })).json()) as { header: { revision: string } };
  const compacted = await fetch(`${w.cluster.etcdUrl}/v3/kv/compaction`, { method: 'POST', body: JSON.stringify({ revision: rev.header.revision, physical: true }) });
  t.true(compacted.ok, `etcd compacted to revision ${rev.header.revision}`);

  const loops = Promise.all(MODES.map((m) => loop(w, m, 'web', 75_000)));
  await new Promise((r) => setTimeout(r, 5000));
  await w.cluster.stopComponent('kube-apiserver', 'SIGKILL');
  const down = Date.now();
  // Last rules kept while the API server is away; nothing is queued, so /healthz stays happy (kube-proxy's rule).
  await new Promise((r) => setTimeout(r, 30_000));
  for (const m of MODES) t.regex(await healthz(w, m), / 200$/, `${m} agent healthy while the API server is away`);
  await new Promise((r) => setTimeout(r, Math.max(0, 60_000 - (Date.now() - down))));
  await w.cluster.startComponent('kube-apiserver');
  const back = Date.now();
  t.log(`kube-apiserver down for ${Math.round((back - down) / 1000)} s`);
  await cut.exec('nft', ['delete', 'table', 'inet', 'xbcut']);
  assertNoFailures(t, 'the API server outage', Object.fromEntries((await loops).map((r, i) => [MODES[i]!, r])));

  // The cut-off agent relists (410) and drops the deleted Service.
  await waitFor('the cut-off agent to remove the deleted Service after its relist', () => noRulesFor(w, 'nftables', doomed), { timeoutMs: RECONNECT_BOUND_MS, intervalMs: 250 });
  const relistMs = Date.now() - back;
  t.log(`cut-off agent removed the deleted Service ${relistMs} ms after the API server was back (bound ${RECONNECT_BOUND_MS} ms)`);
  // A change made now reaches both nodes.
  const changed = Date.now();
  await kubectl(w, ['apply', '-f', '-'], sliceYaml('web', [w.backends[0]!]));
  for (const m of MODES) {
    await waitForAnswers(w, m, 'web', ['b1'], RECONNECT_BOUND_MS);
    t.log(`${m}: a change made after the outage programmed in ${Date.now() - changed} ms`);
  }
  await kubectl(w, ['apply', '-f', '-'], sliceYaml('web', w.backends));
  for (const m of MODES) await waitForAnswers(w, m, 'web', ['b1', 'b2']);
});

test.serial('etcd killed and restarted: traffic flows, and a change made afterwards reaches the nodes', async (t) => {
  t.timeout(5 * 60_000);
  const w = world!;
  const loops = Promise.all(MODES.map((m) => loop(w, m, 'web', 15_000)));
  await new Promise((r) => setTimeout(r, 2000));
  await w.cluster.stopComponent('etcd', 'SIGKILL');
  await new Promise((r) => setTimeout(r, 5000));
  await w.cluster.startComponent('etcd');
  const back = Date.now();
  assertNoFailures(t, 'the etcd restart', Object.fromEntries((await loops).map((r, i) => [MODES[i]!, r])));
  await waitFor('the API server to serve again', async () => (await kubectl(w, ['-n', NS, 'get', 'service', 'web'])).stdout.includes('web'), { timeoutMs: 60_000 });
  await kubectl(w, ['apply', '-f', '-'], sliceYaml('web', [w.backends[1]!]));
  for (const m of MODES) {
    await waitForAnswers(w, m, 'web', ['b2'], RECONNECT_BOUND_MS);
    t.log(`${m}: a change after the etcd restart programmed ${Date.now() - back} ms after etcd was back`);
  }
  await kubectl(w, ['apply', '-f', '-'], sliceYaml('web', w.backends));
  for (const m of MODES) await waitForAnswers(w, m, 'web', ['b1', 'b2']);
});

test.serial('an agent SIGKILLed under load and started again: no failed request, no flush', async (t) => {
  t.timeout(5 * 60_000);
  const w = world!;
  for (const mode of MODES) {
    const loopDone = loop(w, mode, 'web', 12_000);
    await new Promise((r) => setTimeout(r, 2000));
    const agent = w.agents.get(mode)!;
    const exited = new Promise((r) => agent.once('exit', r));
    agent.kill('SIGKILL');
    await exited;
    // Killed, not stopped: the rules are all there is, and they carry the traffic.
    await new Promise((r) => setTimeout(r, 3000));
    const started = Date.now();
    await startAgent(w, mode);
    t.log(`${mode}: agent back (caches synced) ${Date.now() - started} ms after its start`);
    assertNoFailures(t, `an agent SIGKILL and restart`, { [mode]: await loopDone });
  }
});

test.serial('partial and full drift under load: repaired by the next full sync', async (t) => {
  t.timeout(5 * 60_000);
  const w = world!;
  const vip = w.vips.get('web')!;
  const id = `${NS}/web:http/tcp`;
  const drifts: [Mode, string, (node: LabHost) => Promise<unknown>][] = [
    ['iptables', 'one DNAT rule of the Service chain deleted', (n) => n.exec('iptables', ['-t', 'nat', '-D', svcChain({ id }), '3'])],
    ['iptables', 'every nat chain flushed', (n) => n.exec('iptables', ['-t', 'nat', '-F'])],
    ['nftables', 'the slot map flushed', (n) => n.exec('nft', ['flush', 'map', 'ip', shardTable({ id }), 'service-endpoints-tcp'])],
    ['nftables', 'the Service\'s shard table deleted', (n) => n.exec('nft', ['delete', 'table', 'ip', shardTable({ id })])],
  ];
  for (const [mode, what, drift] of drifts) {
    const node = w.nodes[mode];
    // The agent paused (SIGSTOP) while the drift is made and tried: the drift must break traffic, or it tests nothing.
    const agent = w.agents.get(mode)!;
    agent.kill('SIGSTOP');
    await drift(node);
    const broken = await request(node, `http://${vip}/`, 20, ['--timeout-ms', '300']);
    agent.kill('SIGCONT');
    const started = Date.now();
    t.true(broken.failures > 0, `${mode}, ${what}: the drift breaks traffic (${broken.failures}/20 failed)`);
    await waitForAnswers(w, mode, 'web', ['b1', 'b2'], DRIFT_BOUND_MS);
    const repairedMs = Date.now() - started;
    t.log(`${mode}, ${what}: repaired in ${repairedMs} ms (bound ${DRIFT_BOUND_MS} ms)`);
    t.true(repairedMs <= DRIFT_BOUND_MS);
    // Known gap (reported with issue 14): connections tried while the rules were broken left
    // conntrack entries that were never translated (reply source = the cluster IP, SYN_SENT,
    // 120 s). NAT is decided on a flow's first packet, so a new connection that happens to
    // reuse such a source port is not translated and times out, even with the rules right.
    // The agent does not delete them yet; the test does, so it measures the rules alone.
    const stale = await node.exec('conntrack', ['-D', '-p', 'tcp', '--orig-dst', vip, '--reply-src', vip]).catch(() => '');
    t.log(`${mode}, ${what}: ${stale.split('\n').filter(Boolean).length} untranslated conntrack entries from the broken period deleted`);
    // A number of new connections, not a duration: on a loaded machine 3 s held only 43.
    const after = await request(node, `http://${vip}/`, 100, ['--interval-ms', '20', '--timeout-ms', '1000']);
    assertNoFailures(t, `the repaired rules (${what})`, { [mode]: after });
  }
  t.true(w.agentLog.some((l) => l.includes('repaired rules changed behind our back')), 'the agents said what they repaired');
});
