// The agent data-plane scenario shared by every proxy mode, with real traffic: two
// node namespaces (zone-a and zone-b) each running an agent against the real API
// server, three backend namespaces answering with their identity, the operator
// publishing ExternalBackends, and clients inside the nodes and outside them.
// iptables and nftables run it on this machine (test/integration), IPVS in the qemu
// guest (test/guest).
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { ChildProcess } from 'node:child_process';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { kubeconfigViaAddress } from '../../src/devcluster/pki.ts';
import { svcChain as iptablesSvcChain } from '../../src/agent/iptables/render.ts';
import { shardTable } from '../../src/agent/nftables/render.ts';
import { applyYaml, kubectl, testKubeconfig, testNamespace, TIME_SCALE, waitFor } from './cluster.ts';
import { waitForOutput } from './backends.ts';
import { createLab, type Lab, type LabHost } from './lab.ts';
import { startTestOperator, type TestOperator } from './operator.ts';

const BIN = path.join(REPO_ROOT, 'bin', 'extbackend.js');
export const SERVER = path.join(REPO_ROOT, 'test', 'helpers', 'backend-server.ts');
export const CLIENT = path.join(REPO_ROOT, 'test', 'helpers', 'http-client.ts');
const UDP_CLIENT = path.join(REPO_ROOT, 'test', 'helpers', 'udp-client.ts');
export const NODE_ARGS = ['--disable-warning=ExperimentalWarning'];

export interface ClientResult {
  requests: number;
  answers: Record<string, number>;
  failures: number;
  errors: Record<string, number>;
  /** SYNs the client's network namespace retransmitted during the run. */
  synRetransmits: number;
}

export type Mode = 'iptables' | 'nftables' | 'ipvs';

export interface World {
  mode: Mode;
  ns: string;
  lab: Lab;
  nodes: { a: LabHost; b: LabHost };
  nodeNames: { a: string; b: string };
  backends: LabHost[];
  servers: Map<string, ChildProcess>;
  agents: Map<string, ChildProcess>;
  kubeconfig: string;
  agentLog: string[];
  operator: TestOperator;
}

export async function startServer(host: LabHost, identity: string, address = host.ip): Promise<ChildProcess> {
  const child = host.spawn(process.execPath, [...NODE_ARGS, SERVER, '--kind', 'http', '--host', address, '--port', '8080', '--identity', identity]);
  await waitForOutput(child, ['listening'], `server ${identity}`);
  return child;
}

/** A kubeconfig for agents in the lab: the API server through the host's lab address. */
async function agentKubeconfig(lab: Lab): Promise<string> {
  const text = await readFile(testKubeconfig(), 'utf8');
  const patched = kubeconfigViaAddress(text, lab.hostIP);
  const file = path.join(path.dirname(testKubeconfig()), `agent-${randomBytes(3).toString('hex')}.kubeconfig`);
  await (await import('node:fs/promises')).writeFile(file, patched, { mode: 0o600 });
  return file;
}

/** An agent in a lab node, logging at info as JSON into `log`, each line tagged `tag: `. */
export function spawnLabAgent(host: LabHost, o: { kubeconfig: string; nodeName: string; mode: Mode; syncPeriodS: number }, tag: string, log: string[]): ChildProcess {
  const child = host.spawn(process.execPath, [...NODE_ARGS, BIN, 'agent', '--kubeconfig', o.kubeconfig, '--node-name', o.nodeName, '--proxy-mode', o.mode, '--min-sync-period', '100ms', '--sync-period', `${o.syncPeriodS}s`, '--http-address', `${host.ip}:10266`], {
    ...process.env,
    EXTBACKEND_LOG_LEVEL: 'info',
    EXTBACKEND_LOG_FORMAT: 'json',
  });
  const record = (d: Buffer): void => void log.push(...d.toString().split('\n').filter(Boolean).map((l) => `${tag}: ${l}`));
  child.stdout?.on('data', record);
  child.stderr?.on('data', record);
  return child;
}

async function startAgent(w: World, which: 'a' | 'b'): Promise<ChildProcess> {
  const child = spawnLabAgent(w.nodes[which], { kubeconfig: w.kubeconfig, nodeName: w.nodeNames[which], mode: w.mode, syncPeriodS: 10 }, which, w.agentLog);
  w.agents.set(which, child);
  await waitForOutput(child, ['caches synced'], `agent on ${which}`);
  return child;
}

export async function setup(t: ExecutionContext, mode: Mode): Promise<World> {
  const ns = await testNamespace(t);
  const lab = await createLab(t);
  const nodes = { a: await lab.node('nodea'), b: await lab.node('nodeb') };
  const id = randomBytes(3).toString('hex');
  const nodeNames = { a: `node-a-${id}`, b: `node-b-${id}` };
  for (const [k, zone] of [['a', 'zone-a'], ['b', 'zone-b']] as const) {
    await applyYaml(`apiVersion: v1\nkind: Node\nmetadata:\n  name: ${nodeNames[k]}\n  labels: {topology.kubernetes.io/zone: ${zone}, kubernetes.io/hostname: ${nodeNames[k]}}\n`);
    t.teardown(() => kubectl(['delete', 'node', nodeNames[k], '--ignore-not-found']).then(() => undefined));
  }
  const backends = [await lab.backend('b1'), await lab.backend('b2'), await lab.backend('b3')];
  const servers = new Map<string, ChildProcess>();
  for (const [i, b] of backends.entries()) servers.set(`b${i + 1}`, await startServer(b, `b${i + 1}`));
  const operator = await startTestOperator(t, ns);
  const w: World = { mode, ns, lab, nodes, nodeNames, backends, servers, agents: new Map(), kubeconfig: await agentKubeconfig(lab), agentLog: [], operator };
  // A failed scenario shows what the agents said last (warnings and errors first).
  t.teardown(() => {
    if (t.passed) return;
    const problems = w.agentLog.filter((l) => /"level":"(warn|error)"/.test(l));
    console.error([...problems.slice(-10), '--- last lines:', ...w.agentLog.slice(-15)].join('\n'));
  });
  await startAgent(w, 'a');
  await startAgent(w, 'b');
  return w;
}

export async function clusterIP(ns: string, name: string): Promise<string> {
  return waitFor(`Service ${name} to have a cluster IP`, async () => (await kubectl(['-n', ns, 'get', 'service', name, '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim() || false);
}

export async function request(from: LabHost, url: string, count: number, extra: string[] = []): Promise<ClientResult> {
  const out = await from.exec(process.execPath, [...NODE_ARGS, CLIENT, '--url', url, '--count', String(count), ...extra]);
  return JSON.parse(out) as ClientResult;
}

/** Waits until requests from `from` are answered by exactly the backends `expected` (the change is programmed). */
export async function waitForAnswers(from: LabHost, url: string, expected: string[], what: string): Promise<ClientResult> {
  return waitFor(what, async () => {
    const r = await request(from, url, 20, ['--timeout-ms', '500']);
    const got = Object.keys(r.answers).sort();
    return r.failures === 0 && got.join() === [...expected].sort().join() ? r : false;
  }, { timeoutMs: 20_000, intervalMs: 300 });
}

/** Once b1..b3 all answer: 400 requests from `from` split 1:1:2 (the weights) within ±8 %. */
async function assertSpread(t: ExecutionContext, from: LabHost, url: string, what: string): Promise<void> {
  await waitForAnswers(from, url, ['b1', 'b2', 'b3'], `the agent to program the ${what} Service`);
  const spread = await request(from, url, 400);
  t.is(spread.failures, 0);
  const share = (id: string): number => (spread.answers[id] ?? 0) / spread.requests;
  t.log(`${what} 1:1:2 ->`, spread.answers);
  t.true(Math.abs(share('b1') - 0.25) < 0.08 && Math.abs(share('b2') - 0.25) < 0.08 && Math.abs(share('b3') - 0.5) < 0.08, JSON.stringify(spread.answers));
}

export function backendYaml(w: World, name: string, extra = '', addresses?: string): string {
  const [b1, b2, b3] = w.backends;
  const list = addresses ?? `
  - {ip: ${b1!.ip}, nodeName: ${w.nodeNames.a}, zone: zone-a}
  - {ip: ${b2!.ip}, zone: zone-a}
  - {ip: ${b3!.ip}, zone: zone-b, weight: 2}`;
  return `apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: ${name}, namespace: ${w.ns}}
spec:
  addresses:${list}
  ports: [{name: http, port: 80, targetPort: 8080}]
${extra}`;
}

/**
 * What the kernel holds for a service, to tell "left alone" from "rewritten": rule
 * handles (iptables-nft and nftables) or real servers (IPVS), and a counter that a
 * rewrite would reset (packets through the rules, or the virtual server's connections).
 */
async function ruleSnapshot(w: World, node: LabHost, service: string, vip: string): Promise<{ listing: string; identity: string[]; counter: number }> {
  const id = `${w.ns}/${service}:http/tcp`;
  let listing: string;
  if (w.mode === 'ipvs') {
    listing = await node.exec('ipvsadm', ['-Ln', '--stats', '-t', `${vip}:80`]);
    // "TCP  10.96.0.10:80   123   456 ..." : the second column counts connections.
    const conns = Number(/^TCP\s+\S+\s+(\d+)/m.exec(listing)?.[1] ?? 0);
    return { listing, identity: [...listing.matchAll(/-> (\S+)/g)].map((m) => m[1]!).filter((r) => r !== 'RemoteAddress:Port'), counter: conns };
  }
  /** nftables: the Service's slot elements (they have no handles). */
  let elements: string[] = [];
  if (w.mode === 'iptables') {
    // iptables here is iptables-nft: the same rules, seen through nft, have handles.
    listing = await node.exec('nft', ['-a', 'list', 'chain', 'ip', 'nat', iptablesSvcChain({ id })]);
  } else {
    // The Service is slot elements in its shard, behind the slot chain its VIP's verdict element goes to.
    const table = shardTable({ id });
    const at = vip.replaceAll('.', '\\.');
    const verdicts = await node.exec('nft', ['list', 'map', 'ip', table, 'service-ips']);
    const chain = new RegExp(`${at} \\. tcp \\. 80 : goto (\\S+?)[,\\s]`).exec(verdicts)![1]!;
    const slots = await node.exec('nft', ['list', 'map', 'ip', table, 'service-endpoints-tcp']);
    elements = [...slots.matchAll(new RegExp(`${at} \\. 80 \\. \\d+ : \\S+ \\. \\d+`, 'g'))].map((m) => m[0]);
    listing = `${await node.exec('nft', ['-a', 'list', 'chain', 'ip', table, chain])}\n${elements.join('\n')}`;
  }
  const handles = [...listing.matchAll(/# handle (\d+)/g)].map((m) => m[1]!);
  const packets = [...listing.matchAll(/counter packets (\d+)/g)].reduce((n, m) => Math.max(n, Number(m[1])), 0);
  return { listing, identity: [...handles, ...elements], counter: packets };
}

export async function agentScenario(t: ExecutionContext, mode: Mode): Promise<void> {
  const w = await setup(t, mode);
  const { a, b } = w.nodes;

  // Spread with weights 1:1:2.
  await applyYaml(backendYaml(w, 'spread'));
  const vip = await clusterIP(w.ns, 'spread');
  const url = `http://${vip}/`;
  await assertSpread(t, a, url, 'spread');

  // topologyKeys: hostname, then zone, then anything.
  await applyYaml(backendYaml(w, 'topo', '  service: {topologyKeys: [kubernetes.io/hostname, topology.kubernetes.io/zone, "*"]}'));
  const topoUrl = `http://${await clusterIP(w.ns, 'topo')}/`;
  await waitForAnswers(a, topoUrl, ['b1'], 'node a to use the host on its own node');
  t.deepEqual(Object.keys((await request(a, topoUrl, 50)).answers), ['b1']);
  await waitForAnswers(b, topoUrl, ['b3'], 'node b to use its zone');
  t.deepEqual(Object.keys((await request(b, topoUrl, 50)).answers), ['b3']);

  // No key matches on node b: rejected at once, not a timeout.
  await applyYaml(backendYaml(w, 'nomatch', '  service: {topologyKeys: [kubernetes.io/hostname, topology.kubernetes.io/zone]}', `\n  - {ip: ${w.backends[0]!.ip}, nodeName: ${w.nodeNames.a}, zone: zone-a}`));
  const noMatchUrl = `http://${await clusterIP(w.ns, 'nomatch')}/`;
  await waitForAnswers(a, noMatchUrl, ['b1'], 'node a to reach its own host');
  const refused = await waitFor('node b to refuse', async () => {
    const r = await request(b, noMatchUrl, 5, ['--timeout-ms', '1000']);
    return r.errors.ECONNREFUSED === 5 ? r : false;
  });
  // Refused at the first SYN: one dropped first would have been sent again.
  t.is(refused.synRetransmits, 0, 'no SYN was sent twice');

  // NodePort from a client outside every node.
  await applyYaml(backendYaml(w, 'np', '  service: {type: NodePort}'));
  const nodePort = await waitFor('a node port', async () => (await kubectl(['-n', w.ns, 'get', 'service', 'np', '-o', 'jsonpath={.spec.ports[0].nodePort}'])).stdout.trim() || false);
  const client = await w.lab.client('client');
  const fromOutside = await waitForAnswers(client, `http://${a.ip}:${nodePort}/`, ['b1', 'b2', 'b3'], 'the node port to answer from outside');
  t.is(fromOutside.failures, 0);
  const seenViaCluster = await request(client, `http://${a.ip}:${nodePort}/client`, 3);
  t.true(Object.keys(seenViaCluster.answers).every((ip) => ip !== client.ip), `externalTrafficPolicy Cluster masquerades: ${JSON.stringify(seenViaCluster.answers)}`);

  // externalTrafficPolicy Local: external traffic only to the node's own hosts, the
  // client's address kept, and a healthCheckNodePort saying which nodes have any.
  await w.lab.replyVia(w.backends[0]!, client, a);
  await applyYaml(backendYaml(w, 'local', '  service: {type: LoadBalancer, externalTrafficPolicy: Local}'));
  const local = await waitFor('node and health-check ports', async () => {
    const svc = JSON.parse((await kubectl(['-n', w.ns, 'get', 'service', 'local', '-o', 'json'])).stdout) as { spec: { ports: { nodePort?: number }[]; healthCheckNodePort?: number } };
    const np = svc.spec.ports[0]?.nodePort;
    const hc = svc.spec.healthCheckNodePort;
    return np && hc ? { np, hc } : false;
  });
  await waitForAnswers(client, `http://${a.ip}:${local.np}/`, ['b1'], 'node a to send external traffic to its own host only');
  const seenLocal = await request(client, `http://${a.ip}:${local.np}/client`, 5);
  t.deepEqual(seenLocal.answers, { [client.ip]: 5 }, 'the host sees the client\'s own address (no SNAT)');
  const noLocal = await waitFor('node b (no host of its own) to refuse external traffic', async () => {
    const r = await request(client, `http://${b.ip}:${local.np}/`, 3, ['--timeout-ms', '1000']);
    return r.errors.ECONNREFUSED === 3 ? r : false;
  });
  t.is(noLocal.failures, 3);
  const health = async (node: LabHost): Promise<string> => client.exec('curl', ['-s', '-m', '5', '-w', ' %{http_code}', `http://${node.ip}:${local.hc}/`]);
  const healthA = await waitFor('the health-check node port on node a', async () => ((await health(a)).endsWith(' 200') ? health(a) : false));
  t.regex(healthA, /"localEndpoints":1/);
  t.regex(await health(b), /"localEndpoints":0.* 503$/, 'node b has no local endpoints: 503');

  // ClientIP affinity sticks.
  await applyYaml(backendYaml(w, 'sticky', '  service: {sessionAffinity: ClientIP, sessionAffinityTimeoutSeconds: 60}'));
  const stickyUrl = `http://${await clusterIP(w.ns, 'sticky')}/`;
  await waitFor('the sticky service to answer', async () => (await request(a, stickyUrl, 5, ['--timeout-ms', '500'])).failures === 0, { timeoutMs: 20_000, intervalMs: 300 });
  const sticky = await request(a, stickyUrl, 60);
  t.is(Object.keys(sticky.answers).length, 1, `one backend for one client: ${JSON.stringify(sticky.answers)}`);

  // Failover: a stopped host gets no new connections once probes mark it.
  // Three misses in a row: a busy test machine must not take the healthy hosts out too.
  await applyYaml(backendYaml(w, 'probed', '  healthCheck: {type: http, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 3}'));
  const probedUrl = `http://${await clusterIP(w.ns, 'probed')}/`;
  await waitForAnswers(a, probedUrl, ['b1', 'b2', 'b3'], 'the probed service');
  w.servers.get('b2')!.kill('SIGKILL');
  await waitForAnswers(a, probedUrl, ['b1', 'b3'], 'b2 to leave rotation');
  const after = await request(a, probedUrl, 100);
  t.is(after.failures, 0, `failed requests after failover: ${JSON.stringify(after.errors)}`);
  t.is(after.answers.b2, undefined);

  // UDP: datagrams from one source port share a conntrack entry, which would keep
  // them on a removed host until it times out; the agent deletes such entries.
  const [b1, , b3] = w.backends;
  for (const [host, id] of [[b1!, 'b1'], [b3!, 'b3']] as const) {
    const udp = host.spawn(process.execPath, [...NODE_ARGS, SERVER, '--kind', 'udp', '--host', host.ip, '--port', '5353', '--identity', `${id}-udp`]);
    await waitForOutput(udp, ['listening'], `udp server ${id}`);
  }
  const udpYaml = (hosts: LabHost[]): string => backendYaml(w, 'udp', '', hosts.map((h) => `\n  - {ip: ${h.ip}}`).join('')).replace('ports: [{name: http, port: 80, targetPort: 8080}]', 'ports: [{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, targetPort: 5353, protocol: UDP}]');
  await applyYaml(udpYaml([b1!, b3!]));
  const udpVip = await clusterIP(w.ns, 'udp');
  const udpAsk = async (count: number): Promise<{ answers: Record<string, number>; timeouts: number }> =>
    JSON.parse(await a.exec(process.execPath, [...NODE_ARGS, UDP_CLIENT, '--host', udpVip, '--port', '53', '--source-port', '40053', '--count', String(count), '--timeout-ms', '500'])) as { answers: Record<string, number>; timeouts: number };
  const first = await waitFor('the UDP service to answer', async () => {
    const r = await udpAsk(3);
    return Object.keys(r.answers).length === 1 && r.timeouts === 0 ? r : false;
  });
  const stuck = Object.keys(first.answers)[0]!;
  const remaining = stuck === 'b1-udp' ? b3! : b1!;
  await applyYaml(udpYaml([remaining]));
  const moved = await waitFor(`datagrams from the same source port to leave ${stuck} once it is removed`, async () => {
    const r = await udpAsk(1);
    return r.answers[stuck] === undefined && r.timeouts === 0 ? r : false;
  });
  t.deepEqual(Object.keys(moved.answers), [stuck === 'b1-udp' ? 'b3-udp' : 'b1-udp'], `the stale conntrack entry to ${stuck} was deleted`);

  // Restarting the agent under a client loop fails no request and keeps the rules (and
  // their counters: the per-service chain's balancing rules, or in nftables the slot
  // chain the Service's VIP goes to, count every connection).
  const probedVip = await clusterIP(w.ns, 'probed');
  const chainBefore = await ruleSnapshot(w, a, 'probed', probedVip);
  const control = await request(a, probedUrl, 0, ['--duration-ms', '3000', '--interval-ms', '10', '--timeout-ms', '3000']);
  t.log('control loop without restart:', JSON.stringify({ requests: control.requests, failures: control.failures, errors: control.errors }));
  if (control.failures) t.log(w.agentLog.filter((l) => l.startsWith('a:')).slice(-15).join('\n'), await a.exec('conntrack', ['-L', '-p', 'tcp', '--dst-nat', w.backends[1]!.ip]).catch((e: Error) => e.message));
  t.true(chainBefore.counter > 0, 'the service\'s rules have counted traffic');
  // The loop must outlast the agent's restart, which takes much longer in the emulated guest.
  const loop = request(a, probedUrl, 0, ['--duration-ms', String(6000 * TIME_SCALE), '--interval-ms', '10', '--timeout-ms', '3000']);
  await new Promise((r) => setTimeout(r, 1000));
  const agentA = w.agents.get('a')!;
  const exited = new Promise((r) => agentA.once('exit', r));
  agentA.kill('SIGTERM');
  await exited;
  await startAgent(w, 'a');
  const during = await loop;
  if (during.failures) t.log(JSON.stringify(during), w.agentLog.slice(-30).join('\n'));
  t.true(during.requests > 100, `the loop ran (${during.requests} requests)`);
  t.is(during.failures, 0, `no failed request across the restart: ${JSON.stringify(during.errors)}`);
  const chainAfter = await ruleSnapshot(w, a, 'probed', probedVip);
  if (chainAfter.identity.join() !== chainBefore.identity.join()) t.log(chainBefore.listing, chainAfter.listing, w.agentLog.filter((l) => l.startsWith('a:')).slice(-8).join('\n'));
  t.true(chainBefore.identity.length > 0);
  t.deepEqual(chainAfter.identity, chainBefore.identity, 'the same rules (same handles / real servers): nothing was rewritten');
  t.true(chainAfter.counter > chainBefore.counter, 'and its counters kept counting');

  // Rules that are not ours stay; --cleanup removes all of ours and nothing else.
  await b.exec('iptables', ['-t', 'nat', '-N', 'KUBE-SERVICES']);
  await b.exec('iptables', ['-t', 'nat', '-A', 'KUBE-SERVICES', '-d', '10.0.0.1/32', '-j', 'RETURN']);
  await b.exec('nft', ['add', 'table', 'inet', 'foreign']);
  await b.exec('nft', ['add', 'chain', 'inet', 'foreign', 'keep']);
  const foreignIpvs = '-A -t 10.0.0.1:80 -s rr\n-a -t 10.0.0.1:80 -r 10.0.0.2:80 -m -w 1\n';
  if (w.mode === 'ipvs') {
    await b.exec('ipvsadm', ['-A', '-t', '10.0.0.1:80', '-s', 'rr']);
    await b.exec('ipvsadm', ['-a', '-t', '10.0.0.1:80', '-r', '10.0.0.2:80', '-m', '-w', '1']);
  }
  await applyYaml(backendYaml(w, 'another', '', `\n  - {ip: ${w.backends[0]!.ip}}\n  - {ip: ${w.backends[2]!.ip}}`));
  await waitForAnswers(b, `http://${await clusterIP(w.ns, 'another')}/`, ['b1', 'b3'], 'node b to program another service');
  t.regex(await b.exec('iptables-save', ['-t', 'nat']), /-A KUBE-SERVICES -d 10\.0\.0\.1\/32 -j RETURN/);
  t.regex(await b.exec('nft', ['list', 'table', 'inet', 'foreign']), /chain keep/);
  if (w.mode === 'ipvs') t.regex(await b.exec('ipvsadm-save', ['-n']), /-a -t 10\.0\.0\.1:80 -r 10\.0\.0\.2:80 -m -w 1/, 'a foreign virtual server survives our syncs');
  const agentB = w.agents.get('b')!;
  agentB.kill('SIGTERM');
  await new Promise((r) => agentB.once('exit', r));
  await b.exec(process.execPath, [...NODE_ARGS, BIN, 'agent', '--cleanup']);
  const leftNat = await b.exec('iptables-save', ['-t', 'nat']);
  const leftFilter = await b.exec('iptables-save', ['-t', 'filter']);
  t.notRegex(leftNat + leftFilter, /XB-|extbackend/, 'nothing of ours is left');
  t.notRegex(await b.exec('nft', ['list', 'tables']), /extbackend/, 'our nftables table is gone');
  t.regex(leftNat, /-A KUBE-SERVICES -d 10\.0\.0\.1\/32 -j RETURN/, 'foreign rules untouched');
  t.regex(await b.exec('nft', ['list', 'table', 'inet', 'foreign']), /chain keep/);
  if (w.mode === 'ipvs') {
    t.is(await b.exec('ipvsadm-save', ['-n']), foreignIpvs, 'only the foreign virtual server is left');
    t.notRegex(await b.exec('ipset', ['list', '-n']), /XB-/, 'our sets are gone');
    t.notRegex(await b.exec('ip', ['-o', 'link']), /xb-ipvs0/, 'our dummy interface is gone');
  }
}

/**
 * IPv6 through a dual-stack Service (the operator asks for both families): spread by
 * weight over IPv6 hosts from a node, masqueraded to the node's address; a node port
 * on the node's IPv6 address from outside; a Service without endpoints refused at once;
 * `--cleanup` leaves no ip6tables chain or ip6 table behind.
 */
export async function agentScenarioIPv6(t: ExecutionContext, mode: Mode): Promise<void> {
  const w = await setup(t, mode);
  const { a, b } = w.nodes;
  for (const [i, host] of w.backends.entries()) await startServer(host, `b${i + 1}`, host.ip6);
  const [b1, b2, b3] = w.backends;
  const hosts = `\n  - {ip: ${b1!.ip6}}\n  - {ip: ${b2!.ip6}}\n  - {ip: ${b3!.ip6}, weight: 2}`;
  await applyYaml(backendYaml(w, 'six', '  service: {type: NodePort}', hosts));
  const vip6 = await waitFor('the Service to get an IPv6 cluster IP', async () => (await kubectl(['-n', w.ns, 'get', 'service', 'six', '-o', 'jsonpath={.spec.clusterIPs[1]}'])).stdout.trim() || false);
  t.true(vip6.includes(':'), vip6);
  const url = `http://[${vip6}]/`;
  await assertSpread(t, a, url, 'IPv6 spread');
  const seen = await request(a, `http://[${vip6}]/client`, 3);
  t.deepEqual(Object.keys(seen.answers), [a.ip6], 'the hosts see the node, not a cluster address');

  const nodePort = (await kubectl(['-n', w.ns, 'get', 'service', 'six', '-o', 'jsonpath={.spec.ports[0].nodePort}'])).stdout.trim();
  const client = await w.lab.client('client');
  await waitForAnswers(client, `http://[${a.ip6}]:${nodePort}/`, ['b1', 'b2', 'b3'], 'the IPv6 node port to answer from outside');

  // A dual-stack Service of ours with no endpoints at all: refused, not a timeout.
  await applyYaml(`apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ${w.ns}, labels: {service.kubernetes.io/service-proxy-name: extbackend}}
spec: {ipFamilyPolicy: PreferDualStack, ports: [{name: http, port: 80}]}
`);
  const empty6 = await waitFor('the empty Service\'s IPv6 cluster IP', async () => (await kubectl(['-n', w.ns, 'get', 'service', 'empty', '-o', 'jsonpath={.spec.clusterIPs[1]}'])).stdout.trim() || false);
  let last: ClientResult | undefined;
  const refused = await waitFor('node b to refuse the empty IPv6 Service', async () => {
    last = await request(b, `http://[${empty6}]/`, 5, ['--timeout-ms', '1000']);
    return last.errors.ECONNREFUSED === 5 ? last : false;
  }).catch((err: Error) => {
    throw new Error(`${err.message}; the client saw ${JSON.stringify(last?.errors)}`);
  });
  t.is(refused.synRetransmits, 0, 'refused at the first SYN: none was sent twice');

  const agentB = w.agents.get('b')!;
  agentB.kill('SIGTERM');
  await new Promise((r) => agentB.once('exit', r));
  await b.exec(process.execPath, [...NODE_ARGS, BIN, 'agent', '--cleanup']);
  const left6 = (await b.exec('ip6tables-save', ['-t', 'nat'])) + (await b.exec('ip6tables-save', ['-t', 'filter']));
  t.notRegex(left6, /XB-/, 'no ip6tables chain of ours is left');
  t.notRegex(await b.exec('nft', ['list', 'tables', 'ip6']), /extbackend/, 'no ip6 table of ours is left');
}

export const SCENARIO_STEPS = 'spread, weights, topologyKeys, reject, NodePort, ETP Local with source IP and health-check port, affinity, failover, UDP conntrack cleanup, restart, foreign rules, cleanup';
