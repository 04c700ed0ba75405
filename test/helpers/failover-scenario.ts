// Primary/backup failover and drain with real traffic, for every proxy mode (iptables
// and nftables on this machine; IPVS is meant for the qemu guest): primaries b1 and b2
// (priority 0) and backups b3 and b4 (priority 1), each in its own namespace, probed
// over HTTP; a client on node a opens a new connection every few milliseconds and
// records where each one lands.
import { once } from 'node:events';
import path from 'node:path';
import type { ExecutionContext } from 'ava';
import type { ChildProcess } from 'node:child_process';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { applyYaml, kubectl, TIME_SCALE, waitFor } from './cluster.ts';
import { waitForOutput } from './backends.ts';
import { backendYaml, clusterIP, CLIENT, NODE_ARGS, request, setup, startServer, waitForAnswers, type Mode, type World } from './agent-scenario.ts';
import type { LabHost } from './lab.ts';
import type { ExternalBackendStatus } from '../../src/api/external-backend.ts';

const LONG_CLIENT = path.join(REPO_ROOT, 'test', 'helpers', 'long-connection.ts');

// Probes every second, a host is down after two failures, each probe waits at most 1 s:
// failover is due within failureThreshold x period + timeout + 1 s of processing.
const PERIOD_S = 1;
const FAILURE_THRESHOLD = 2;
const TIMEOUT_S = 1;
const FAILOVER_BOUND_MS = (FAILURE_THRESHOLD * PERIOD_S + TIMEOUT_S + 1) * 1000 * TIME_SCALE;
// What the node adds after the switch is published: one sync of the proxy. On the shared
// 2-core test machine under load (load average 9) an agent's partial sync took 0.4-2 s.
const PROGRAMMING_ALLOWANCE_MS = 2000 * TIME_SCALE;
// Long enough for a flap (up for a probe or two, then down) to fit inside it, on emulated CPUs too.
const FAILBACK_DELAY_S = Math.ceil(8 * TIME_SCALE);

type Timeline = [number, string][];

interface Loop {
  stop(): Promise<Timeline>;
}

/** New connections from `from` every 20 ms, recorded until stopped. */
async function startLoop(from: LabHost, url: string): Promise<Loop> {
  const child = from.spawn(process.execPath, [...NODE_ARGS, CLIENT, '--url', url, '--count', '1000000', '--interval-ms', '20', '--timeout-ms', '3000', '--timeline']);
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = once(child, 'exit');
  // The client's first request tells us it runs.
  await new Promise((r) => setTimeout(r, 300));
  return {
    stop: async () => {
      child.kill('SIGUSR2');
      await exited;
      return (JSON.parse(out) as { timeline: Timeline }).timeline;
    },
  };
}

async function status(w: World, name: string): Promise<ExternalBackendStatus> {
  const { stdout } = await kubectl(['-n', w.ns, 'get', 'externalbackend', name, '-o', 'json']);
  return (JSON.parse(stdout) as { status?: ExternalBackendStatus }).status ?? {};
}

async function stopServer(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

/** The first moment after which every request of the timeline was answered by one of `ids` (and none failed). */
function settledAt(timeline: Timeline, ids: string[], after: number): number | undefined {
  let at: number | undefined;
  for (const [t, outcome] of timeline) {
    if (t < after) continue;
    if (ids.includes(outcome)) at ??= t;
    else at = undefined;
  }
  return at;
}

const counts = (timeline: Timeline, from: number, to = Infinity): Record<string, number> => {
  const out: Record<string, number> = {};
  for (const [t, o] of timeline) if (t >= from && t < to) out[o] = (out[o] ?? 0) + 1;
  return out;
};

export const FAILOVER_STEPS = 'all traffic to priority 0; primaries killed: backups within failureThreshold x period + timeout + 1 s, no failure after the switch; a flapping primary within the failback delay never takes traffic; failback after the delay without a failure; a drained host keeps its open connection and gets no new ones';

/** kube-proxy, built with the control plane, on node a (beside our agent, which ignores unlabelled Services). */
async function startKubeProxy(w: World): Promise<void> {
  const bin = path.join(process.env.EXTBACKEND_CONTROLPLANE_BIN ?? '', 'kube-proxy');
  // kube-proxy runs iptables from PATH: never npm's node_modules/.bin. --masquerade-all: the
  // node's route to cluster IPs leads into the lab's dead end, so without SNAT the hosts'
  // replies would go to that interface's address (our agent masquerades such traffic too).
  const systemPath = (process.env.PATH ?? '').split(':').filter((d) => !d.includes('node_modules')).join(':');
  const host = w.nodes.a;
  const child = host.spawn(bin, ['--kubeconfig', w.kubeconfig, '--hostname-override', w.nodeNames.a, '--proxy-mode', 'iptables', '--metrics-bind-address', `${host.ip}:10366`, '--healthz-bind-address', `${host.ip}:10356`, '--conntrack-max-per-core', '0', '--iptables-min-sync-period', '100ms', '--iptables-localhost-nodeports=false', '--masquerade-all', '--v', '1'], { ...process.env, PATH: systemPath });
  const record = (d: Buffer): void => void w.agentLog.push(...d.toString().split('\n').filter(Boolean).map((l) => `kube-proxy: ${l}`));
  child.stdout?.on('data', record);
  child.stderr?.on('data', record);
  await waitForOutput(child, ['Caches are synced'], 'kube-proxy');
}

export async function failoverScenario(t: ExecutionContext, mode: Mode, proxy: 'agent' | 'kube-proxy' = 'agent'): Promise<void> {
  const w = await setup(t, mode);
  const { a } = w.nodes;
  if (proxy === 'kube-proxy') await startKubeProxy(w);
  const label = proxy === 'kube-proxy' ? 'kube-proxy' : mode;
  const b4 = await w.lab.backend('b4');
  w.backends.push(b4);
  w.servers.set('b4', await startServer(b4, 'b4'));
  const [h1, h2, h3, h4] = w.backends;
  const addresses = (drain = '') => `
  - {ip: ${h1!.ip}${drain}}
  - {ip: ${h2!.ip}}
  - {ip: ${h3!.ip}, priority: 1}
  - {ip: ${h4!.ip}, priority: 1}`;
  const extra = `${proxy === 'kube-proxy' ? '  service: {proxy: kube-proxy}\n' : ''}  healthCheck: {type: http, periodSeconds: ${PERIOD_S}, timeoutSeconds: ${TIMEOUT_S}, failureThreshold: ${FAILURE_THRESHOLD}}
  failover: {failbackDelaySeconds: ${FAILBACK_DELAY_S}}`;
  await applyYaml(backendYaml(w, 'db', extra, addresses()));
  const url = `http://${await clusterIP(w.ns, 'db')}/`;
  // kube-proxy's first sync of a new Service took over 20 s on the loaded test machine.
  if (proxy === 'kube-proxy') await waitFor('kube-proxy to program the Service', async () => (await request(a, url, 5, ['--timeout-ms', '1000'])).failures === 0, { timeoutMs: 90_000, intervalMs: 500 });

  // Everything to priority 0.
  await waitForAnswers(a, url, ['b1', 'b2'], 'the primaries to take every connection').catch(async (err: Error) => {
    t.log(JSON.stringify(await request(a, url, 5, ['--timeout-ms', '1000'])), await a.exec('iptables-save', ['-t', 'nat']));
    throw err;
  });
  const steady = await request(a, url, 200);
  t.deepEqual(Object.keys(steady.answers).sort(), ['b1', 'b2'], `no connection to a backup while the primaries are healthy: ${JSON.stringify(steady.answers)}`);
  t.is(steady.failures, 0);
  t.is((await status(w, 'db')).active, '0');

  // Kill both primaries under load.
  const loop = await startLoop(a, url);
  const killedAt = Date.now();
  await stopServer(w.servers.get('b1')!);
  await stopServer(w.servers.get('b2')!);
  const failedOver = await waitFor('the status to show priority 1 active', async () => {
    const s = await status(w, 'db');
    return s.active === '1' ? s : false;
  }, { timeoutMs: 30_000, intervalMs: 200 });
  const publishedAt = Date.parse(failedOver.activeGroups![0]!.lastTransitionTime!);
  t.regex(failedOver.conditions!.find((c) => c.type === 'FailedOver')!.message, /all 2 hosts of priority 0 failing/);
  const metrics = await w.operator.running.metrics.render();
  t.regex(metrics, new RegExp(`extbackend_active_priority\\{namespace="${w.ns}",backend="db",port="http"\\} 1`));
  t.regex(metrics, new RegExp(`extbackend_failovers_total\\{namespace="${w.ns}",backend="db",port="http",direction="failover"\\} 1`));
  const events = await waitFor('a FailedOver Event', async () => {
    const { stdout } = await kubectl(['-n', w.ns, 'get', 'events', '--field-selector', 'reason=FailedOver', '-o', 'jsonpath={.items[*].message}']);
    return stdout.trim() || false;
  });
  t.regex(events, /port http: priority 0 -> priority 1: all 2 hosts of priority 0 failing/);
  // A flapping primary inside the failback delay: up about two probe periods, then down again, twice.
  await new Promise((r) => setTimeout(r, 1500 * TIME_SCALE));
  const flapFrom = Date.now();
  for (let i = 0; i < 2; i++) {
    const flapper = await startServer(h1!, 'b1');
    await waitFor('b1 to be probed healthy', async () => (await status(w, 'db')).activeGroups?.[0]?.failback !== undefined, { timeoutMs: 15_000, intervalMs: 200 });
    await stopServer(flapper);
    await waitFor('b1 to be probed down again', async () => (await status(w, 'db')).activeGroups?.[0]?.failback === undefined, { timeoutMs: 15_000, intervalMs: 200 });
  }
  const flapTo = Date.now();
  // Revive both primaries: traffic returns after the delay.
  const revivedAt = Date.now();
  w.servers.set('b1', await startServer(h1!, 'b1'));
  w.servers.set('b2', await startServer(h2!, 'b2'));
  const failedBack = await waitFor('the status to show priority 0 active again', async () => {
    const s = await status(w, 'db');
    return s.active === '0' ? s : false;
  }, { timeoutMs: 60_000, intervalMs: 200 });
  const failbackPublishedAt = Date.parse(failedBack.activeGroups![0]!.lastTransitionTime!);
  await new Promise((r) => setTimeout(r, 1500));
  const timeline = await loop.stop();

  const switchedAt = settledAt(timeline.filter(([tm]) => tm < revivedAt), ['b3', 'b4'], killedAt);
  const failoverMs = switchedAt === undefined ? Infinity : switchedAt - killedAt;
  const window = counts(timeline, killedAt, switchedAt ?? Infinity);
  const afterSwitch = counts(timeline, switchedAt ?? Infinity, revivedAt);
  const afterPublish = counts(timeline, publishedAt, revivedAt);
  const duringFlap = counts(timeline, flapFrom, flapTo);
  const backAt = settledAt(timeline.filter(([tm]) => tm >= revivedAt), ['b1', 'b2'], revivedAt);
  const failback = counts(timeline, revivedAt);
  const firstBackup = timeline.find(([tm, o]) => tm >= killedAt && ['b3', 'b4'].includes(o))?.[0];
  const lastFailure = timeline.filter(([tm, o]) => tm >= killedAt && tm < revivedAt && !['b3', 'b4'].includes(o)).pop()?.[0];
  t.log(`${label}: failover: published ${publishedAt - killedAt} ms after the kill, first connection on a backup ${firstBackup === undefined ? 'never' : firstBackup - killedAt} ms, last failure ${lastFailure === undefined ? 'none' : lastFailure - killedAt} ms, every new connection on a backup from ${failoverMs} ms after it (bound ${FAILOVER_BOUND_MS} ms + ${PROGRAMMING_ALLOWANCE_MS} ms for the proxy's sync); during the switch ${JSON.stringify(window)}; after it ${JSON.stringify(afterSwitch)}; from the publication on ${JSON.stringify(afterPublish)}`);
  t.log(`${label}: flapping primary: ${JSON.stringify(duringFlap)}; failback published ${failbackPublishedAt - revivedAt} ms after the revival, connections back ${backAt === undefined ? 'never' : `${backAt - revivedAt} ms`} (delay ${FAILBACK_DELAY_S} s); from the revival on ${JSON.stringify(failback)}`);
  t.true(publishedAt - killedAt <= FAILOVER_BOUND_MS, `the switch was published ${publishedAt - killedAt} ms after the kill`);
  t.true(failoverMs <= FAILOVER_BOUND_MS + PROGRAMMING_ALLOWANCE_MS, `every new connection reached the backups ${failoverMs} ms after the kill`);
  t.deepEqual(Object.keys(afterSwitch).filter((o) => !['b3', 'b4'].includes(o)), [], 'no failure and no primary once the switch reached the node');
  t.is(duringFlap.b1, undefined, 'the flapping primary took no connection');
  t.true(failbackPublishedAt - revivedAt >= FAILBACK_DELAY_S * 1000, 'failback waited for the delay');
  t.true(backAt !== undefined && backAt - revivedAt >= FAILBACK_DELAY_S * 1000, 'no connection reached a primary before the delay ran out');
  t.deepEqual(Object.keys(failback).filter((o) => o.startsWith('error:')), [], 'failback fails no connection');

  // Drain b1 with a connection open to it.
  const conn = await openConnectionTo(a, url, 'b1');
  await applyYaml(backendYaml(w, 'db', extra, addresses(', drain: true')));
  const drained = await waitFor('b1 to be draining', async () => {
    const s = await status(w, 'db');
    return s.addresses?.find((x) => x.address === h1!.ip)?.role === 'draining' ? s : false;
  }, { timeoutMs: 20_000, intervalMs: 200 });
  t.is(drained.conditions!.find((c) => c.type === 'Draining')?.reason, 'Drained');
  await waitForAnswers(a, url, ['b2'], 'new connections to leave the drained host');
  const drainPublishedAt = Date.now();
  const afterDrain = await request(a, url, 200);
  t.deepEqual(afterDrain.answers, { b2: 200 }, 'every new connection goes to the other primary, none to a standby');
  await new Promise((r) => setTimeout(r, 1000));
  const open = await conn.stop();
  t.log(`${label}: drain: the open connection answered ${JSON.stringify(open.answers)}, last ${open.lastAnswerAt - drainPublishedAt} ms after the drain was in effect; it ended: ${open.ended}`);
  t.is(open.ended, 'stopped', 'the open connection was never cut');
  t.deepEqual(Object.keys(open.answers), ['b1']);
  t.true(open.lastAnswerAt > drainPublishedAt + 500, 'bytes still flow on it after the drain');
}

interface OpenConnection {
  stop(): Promise<{ answers: Record<string, number>; lastAnswerAt: number; ended: string }>;
}

/** A long-lived connection through the Service that landed on `id` (new ones until one does). */
async function openConnectionTo(from: LabHost, url: string, id: string): Promise<OpenConnection> {
  for (let attempt = 0; attempt < 30; attempt++) {
    const child = from.spawn(process.execPath, [...NODE_ARGS, LONG_CLIENT, '--url', url, '--interval-ms', '100']);
    let out = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    const exited = once(child, 'exit');
    await waitForOutput(child, ['connected '], 'the long-lived connection');
    if (out.includes(`connected ${id}\n`)) {
      return {
        stop: async () => {
          child.kill('SIGUSR2');
          await exited;
          return JSON.parse(out.split('\n').filter(Boolean).pop()!) as { answers: Record<string, number>; lastAnswerAt: number; ended: string };
        },
      };
    }
    child.kill('SIGKILL');
    await exited;
  }
  throw new Error(`no connection landed on ${id} in 30 tries`);
}
