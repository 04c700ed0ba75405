// The IPVS applier against a real kernel (in the qemu guest's own network namespace,
// which the data-plane scenario does not use): schedulers, persistence, IPv6,
// idempotence across restarts, draining, foreign and conflicting virtual servers,
// cleanup.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test from 'ava';
import { cleanupAgent } from '../../src/agent/agent.ts';
import { IpvsApplier, prepareIpvsNode } from '../../src/agent/ipvs/apply.ts';
import { SCHEDULERS, type Scheduler } from '../../src/agent/ipvs/plan.ts';
import { buildProxyModel, type ProxyModel, type ServiceInput, type SliceInput } from '../../src/agent/model.ts';
import { createLogger } from '../../src/log.ts';

const run = promisify(execFile);
const sh = async (cmd: string, ...args: string[]): Promise<string> => (await run(cmd, args)).stdout;
const log = createLogger({ level: 'warn' });

interface Svc {
  name: string;
  ip: string;
  endpoints: { ip: string; ready?: boolean; terminating?: boolean; weight?: number }[];
  affinity?: number;
}

function model(services: Svc[]): ProxyModel {
  const svcs: ServiceInput[] = services.map((s) => ({
    metadata: { name: s.name, namespace: 'ns' },
    spec: { clusterIP: s.ip, ports: [{ name: 'http', port: 80, protocol: 'TCP' }], ...(s.affinity ? { sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: s.affinity } } } : {}) },
  }));
  const slices: SliceInput[] = services.map((s) => ({
    metadata: { name: `${s.name}-1`, namespace: 'ns', labels: { 'kubernetes.io/service-name': s.name }, annotations: { 'extbackend.io/endpoint-topology': JSON.stringify(Object.fromEntries(s.endpoints.filter((e) => e.weight).map((e) => [e.ip, { weight: e.weight }]))) } },
    addressType: s.ip.includes(':') ? 'IPv6' : 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints: s.endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true, serving: (e.ready ?? true) || !!e.terminating, terminating: e.terminating ?? false } })),
  }));
  return buildProxyModel(svcs, slices, { name: 'guest', labels: {}, nodePortAddresses: [] }, { externalIPAllowed: () => false });
}

async function applyBoth(m: ProxyModel, full: boolean, scheduler: Scheduler = 'rr', appliers = { 4: new IpvsApplier(4), 6: new IpvsApplier(6) }): Promise<number> {
  await prepareIpvsNode();
  let written = 0;
  for (const f of [4, 6] as const) written += (await appliers[f].apply(m, full, { scheduler, nodeAddresses: [] })).written;
  return written;
}

test.afterEach.always(async () => {
  await cleanupAgent(log);
  await sh('ipvsadm', '-C');
});

test.serial('every scheduler is accepted by the kernel; persistence is set', async (t) => {
  const services = SCHEDULERS.map((_, i) => ({ name: `s${i}`, ip: `10.96.1.${i + 1}`, endpoints: [{ ip: '198.18.0.1' }, { ip: '198.18.0.2' }], affinity: 300 }));
  for (const scheduler of SCHEDULERS) {
    await applyBoth(model(services), true, scheduler);
    const saved = await sh('ipvsadm-save', '-n');
    t.regex(saved, new RegExp(`-A -t 10\\.96\\.1\\.1:80 -s ${scheduler} -p 300`), scheduler);
  }
});

test.serial('idempotent: a second sync and a restarted applier write nothing; IPv6 too', async (t) => {
  const m = model([
    { name: 'a', ip: '10.96.2.1', endpoints: [{ ip: '198.18.0.1' }, { ip: '198.18.0.2', weight: 3 }] },
    { name: 'b', ip: 'fd00:96::1', endpoints: [{ ip: 'fd00:18::1' }] },
  ]);
  const appliers = { 4: new IpvsApplier(4), 6: new IpvsApplier(6) };
  t.is(await applyBoth(m, true, 'rr', appliers), 2);
  t.is(await applyBoth(m, false, 'rr', appliers), 0);
  t.is(await applyBoth(m, true), 0, 'a fresh applier reads the kernel and finds everything right');
  const saved = await sh('ipvsadm-save', '-n');
  t.regex(saved, /-A -t 10\.96\.2\.1:80 -s wrr/);
  t.regex(saved, /-a -t 10\.96\.2\.1:80 -r 198\.18\.0\.2:8080 -m -w 3/);
  t.regex(saved, /-a -t \[fd00:96::1\]:80 -r \[fd00:18::1\]:8080 -m -w 1/);
  t.regex(await sh('ip', '-o', 'addr', 'show', 'dev', 'xb-ipvs0'), /inet 10\.96\.2\.1\/32.*inet6 fd00:96::1\/128/s);
});

test.serial('dead hosts leave at once, terminating ones drain at weight 0; removed services go', async (t) => {
  await applyBoth(model([{ name: 'a', ip: '10.96.3.1', endpoints: [{ ip: '198.18.0.1' }, { ip: '198.18.0.2' }, { ip: '198.18.0.3' }] }, { name: 'gone', ip: '10.96.3.2', endpoints: [{ ip: '198.18.0.1' }] }]), true);
  await applyBoth(model([{ name: 'a', ip: '10.96.3.1', endpoints: [{ ip: '198.18.0.1' }, { ip: '198.18.0.2', ready: false }, { ip: '198.18.0.3', ready: false, terminating: true }] }]), false);
  const saved = await sh('ipvsadm-save', '-n');
  t.notRegex(saved, /198\.18\.0\.2/, 'the dead host is gone');
  t.regex(saved, /-a -t 10\.96\.3\.1:80 -r 198\.18\.0\.3:8080 -m -w 0/, 'the terminating one drains');
  t.notRegex(saved, /10\.96\.3\.2/, 'the removed service is gone');
  t.notRegex(await sh('ip', '-o', 'addr', 'show', 'dev', 'xb-ipvs0'), /10\.96\.3\.2/, 'and its address');
});

test.serial('foreign virtual servers are never touched, even one on an address we want', async (t) => {
  await sh('ipvsadm', '-A', '-t', '10.0.0.1:80', '-s', 'rr');
  await sh('ipvsadm', '-A', '-t', '10.96.4.2:80', '-s', 'lc');
  await sh('ipvsadm', '-a', '-t', '10.96.4.2:80', '-r', '10.0.0.9:80', '-m');
  const m = model([{ name: 'a', ip: '10.96.4.1', endpoints: [{ ip: '198.18.0.1' }] }, { name: 'clash', ip: '10.96.4.2', endpoints: [{ ip: '198.18.0.1' }] }]);
  const applier = new IpvsApplier(4);
  await prepareIpvsNode();
  const r = await applier.apply(m, true, { scheduler: 'rr', nodeAddresses: [] });
  t.deepEqual(r.conflicts, ['-t 10.96.4.2:80']);
  t.notRegex(await sh('ipset', 'list', 'XB-IPVS-OWNED-4') + await sh('ipset', 'list', 'XB-IPVS-MASQ-4'), /10\.96\.4\.2/, 'the foreign one is neither recorded as ours nor masqueraded by us');
  t.regex(await sh('ipset', 'list', 'XB-IPVS-OWNED-4'), /10\.96\.4\.1,tcp:80/);
  await applier.apply(model([]), true, { scheduler: 'rr', nodeAddresses: [] });
  const saved = await sh('ipvsadm-save', '-n');
  t.is(saved, '-A -t 10.0.0.1:80 -s rr\n-A -t 10.96.4.2:80 -s lc\n-a -t 10.96.4.2:80 -r 10.0.0.9:80 -m -w 1\n', 'ours are gone, the foreign ones are exactly as they were');
  await applyBoth(m, true);
  await cleanupAgent(log);
  t.is(await sh('ipvsadm-save', '-n'), '-A -t 10.0.0.1:80 -s rr\n-A -t 10.96.4.2:80 -s lc\n-a -t 10.96.4.2:80 -r 10.0.0.9:80 -m -w 1\n', '--cleanup removes only ours');
  t.notRegex(await sh('ip', '-o', 'link'), /xb-ipvs0/);
  t.notRegex(await sh('ipset', 'list', '-n'), /XB-/);
});
