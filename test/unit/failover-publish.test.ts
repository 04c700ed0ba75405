// Failover and drain as the cluster sees them: the slice conditions the operator
// publishes, the status it reports, and what the agent makes of those slices.
import test from 'ava';
import { desiredState, type HealthLookup, type ResolvedAddress } from '../../src/operator/desired.ts';
import { decideFailover } from '../../src/operator/failover.ts';
import { computeStatus } from '../../src/operator/status.ts';
import type { ExternalBackend, ExternalBackendSpec } from '../../src/api/external-backend.ts';
import { buildProxyModel, type ProxyModel, type ServiceInput, type SliceInput } from '../../src/agent/model.ts';
import { staleUdpEndpoints } from '../../src/agent/stale-udp.ts';

function backend(spec: Partial<ExternalBackendSpec>): ExternalBackend {
  return {
    apiVersion: 'extbackend.io/v1alpha1',
    kind: 'ExternalBackend',
    metadata: { name: 'db', namespace: 'ns', uid: 'uid-1', generation: 1 },
    spec: { addresses: [], ports: [{ name: 'mysql', port: 3306 }], ...spec },
  };
}
const literal = (eb: ExternalBackend): ResolvedAddress[] => eb.spec.addresses.map((a) => ({ spec: a, key: a.ip!, ips: [a.ip!] }));
type Conditions = { ready: boolean; serving: boolean; terminating: boolean };
type Slice = { ports: { name: string; port: number }[]; endpoints: { addresses: string[]; conditions: Conditions }[] };

/** ip -> conditions, per port name, from the desired slices. */
function published(eb: ExternalBackend, resolved: ResolvedAddress[], health: HealthLookup): Record<string, Record<string, Conditions>> {
  const out: Record<string, Record<string, Conditions>> = {};
  for (const s of desiredState(eb, resolved, health).slices as unknown as Slice[]) {
    for (const p of s.ports) for (const e of s.endpoints) (out[p.name] ??= {})[e.addresses[0]!] = e.conditions;
  }
  return out;
}

const ACTIVE = { ready: true, serving: true, terminating: false };
const STANDBY = { ready: false, serving: true, terminating: false };
const DOWN = { ready: false, serving: false, terminating: false };
const DRAINING = { ready: false, serving: true, terminating: true };

const primaries = [{ ip: '192.0.2.1' }, { ip: '192.0.2.2' }];
const backups = [{ ip: '198.51.100.1', priority: 1 }, { ip: '198.51.100.2', priority: 1 }];

test('standby hosts are published ready false, serving true; failed primaries hand the port to them', (t) => {
  const eb = backend({ addresses: [...primaries, ...backups] });
  t.deepEqual(published(eb, literal(eb), () => true).mysql, { '192.0.2.1': ACTIVE, '192.0.2.2': ACTIVE, '198.51.100.1': STANDBY, '198.51.100.2': STANDBY });
  const primariesDown: HealthLookup = (ip) => !ip.startsWith('192.0.2.');
  t.deepEqual(published(eb, literal(eb), primariesDown).mysql, { '192.0.2.1': DOWN, '192.0.2.2': DOWN, '198.51.100.1': ACTIVE, '198.51.100.2': ACTIVE });
});

test('a drained host is published terminating with serving from its probes; publishNotReadyAddresses keeps every host ready', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1', drain: true }, { ip: '192.0.2.2' }, { ip: '192.0.2.3', drain: true }] });
  t.deepEqual(published(eb, literal(eb), (ip) => ip !== '192.0.2.3').mysql, { '192.0.2.1': DRAINING, '192.0.2.2': ACTIVE, '192.0.2.3': { ...DOWN, terminating: true } });
  const pna = backend({ ...eb.spec, service: { publishNotReadyAddresses: true } });
  t.deepEqual(published(pna, literal(pna), () => true).mysql, { '192.0.2.1': { ...DRAINING, ready: true }, '192.0.2.2': ACTIVE, '192.0.2.3': { ...DRAINING, ready: true } });
});

test('each port fails over on its own; a host whose ports differ in role gets a slice per port list', (t) => {
  const eb = backend({ ports: [{ name: 'mysql', port: 3306 }, { name: 'admin', port: 33062 }], addresses: [{ ip: '192.0.2.1' }, { ip: '198.51.100.1', priority: 1 }] });
  const adminDown: HealthLookup = (ip, port) => !(ip === '192.0.2.1' && port.name === 'admin');
  const p = published(eb, literal(eb), adminDown);
  t.deepEqual(p.mysql, { '192.0.2.1': ACTIVE, '198.51.100.1': STANDBY });
  t.deepEqual(p.admin, { '192.0.2.1': DOWN, '198.51.100.1': ACTIVE });
});

test('a hostname\'s addresses inherit its priority and drain; weights and target ports stay per host', (t) => {
  const eb = backend({ addresses: [{ hostname: 'primary.db.test', weight: 3 }, { hostname: 'backup.db.test', priority: 1, targetPorts: { mysql: 3307 } }] });
  const resolved: ResolvedAddress[] = [
    { spec: eb.spec.addresses[0]!, key: 'primary.db.test', ips: ['192.0.2.1', '192.0.2.2'] },
    { spec: eb.spec.addresses[1]!, key: 'backup.db.test', ips: ['198.51.100.1'] },
  ];
  const slices = desiredState(eb, resolved, (ip) => ip !== '192.0.2.1').slices as unknown as (Slice & { metadata: { annotations: Record<string, string> } })[];
  const byPort = Object.fromEntries(slices.map((s) => [s.ports[0]!.port, s]));
  t.deepEqual(byPort[3306]!.endpoints.map((e) => [e.addresses[0], e.conditions]), [['192.0.2.1', DOWN], ['192.0.2.2', ACTIVE]]);
  t.deepEqual(byPort[3307]!.endpoints.map((e) => [e.addresses[0], e.conditions]), [['198.51.100.1', STANDBY]]);
  t.regex(byPort[3306]!.metadata.annotations['extbackend.io/endpoint-topology']!, /"weight":3/);
});

test('status: roles and priorities per address, the active group per port, FailedOver with the reason', (t) => {
  const eb = backend({ addresses: [...primaries, ...backups], failover: { failbackDelaySeconds: 30 } });
  const resolved = literal(eb);
  const down: HealthLookup = (ip) => !ip.startsWith('192.0.2.');
  const status = (e: ExternalBackend, health: HealthLookup, nowMs: number) => {
    const failover = decideFailover({ eb: e, resolved, health, nowMs });
    return computeStatus({ eb: e, resolved, health, desired: desiredState(e, resolved, health, failover), now: new Date(nowMs).toISOString() });
  };
  const t0 = Date.parse('2026-01-01T00:00:00Z');
  const healthy = status(eb, () => true, t0);
  t.is(healthy.active, '0');
  t.is(healthy.ready, '2/4', 'READY counts hosts taking new connections');
  t.deepEqual(healthy.addresses!.map((a) => [a.priority, a.role]), [[0, 'active'], [0, 'active'], [1, 'standby'], [1, 'standby']]);
  t.is(healthy.state, 'Ready', 'standby hosts are not a degradation');
  t.is(healthy.conditions!.find((c) => c.type === 'FailedOver')?.status, 'False');

  const failed = status({ ...eb, status: healthy }, down, t0 + 5_000);
  t.is(failed.active, '1');
  t.deepEqual(failed.activeGroups?.map((g) => [g.port, g.priority, g.readyHosts]), [['mysql', 1, 2]]);
  const cond = failed.conditions!.find((c) => c.type === 'FailedOver')!;
  t.is(cond.status, 'True');
  t.regex(cond.message, /port mysql: served by priority 1: all 2 hosts of priority 0 failing/);
  t.deepEqual(failed.addresses!.map((a) => a.role), ['down', 'down', 'active', 'active']);

  const recovered = status({ ...eb, status: failed }, () => true, t0 + 10_000);
  t.is(recovered.active, '1', 'still inside the failback delay');
  t.deepEqual(recovered.activeGroups![0]!.failback, { priority: 0, healthySince: '2026-01-01T00:00:10.000Z', at: '2026-01-01T00:00:40.000Z' });
  t.is(recovered.conditions!.find((c) => c.type === 'FailedOver')!.reason, 'FailbackPending');
  const back = status({ ...eb, status: recovered }, () => true, t0 + 40_000);
  t.is(back.active, '0');
  t.is(back.activeGroups![0]!.failback, undefined);
});

test('status: every host drained says so; nothing healthy shows "none"', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1', drain: true }, { ip: '192.0.2.2', drain: true }] });
  const resolved = literal(eb);
  const s = computeStatus({ eb, resolved, health: () => true, desired: desiredState(eb, resolved), now: 't' });
  const draining = s.conditions!.find((c) => c.type === 'Draining')!;
  t.is(draining.reason, 'AllDrained');
  t.regex(draining.message, /every host is drained/);
  t.is(s.active, 'none');
  t.is(s.conditions!.find((c) => c.type === 'Ready')!.status, 'True', 'drained hosts still serve as the last resort');
});

const svc: ServiceInput = { metadata: { name: 'db', namespace: 'ns' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'mysql', port: 3306, protocol: 'UDP' }] } };
function slice(conditions: Record<string, Conditions>): SliceInput {
  return {
    metadata: { name: 'db-1', namespace: 'ns', labels: { 'kubernetes.io/service-name': 'db' } },
    addressType: 'IPv4',
    ports: [{ name: 'mysql', port: 3306, protocol: 'UDP' }],
    endpoints: Object.entries(conditions).map(([ip, c]) => ({ addresses: [ip], conditions: c })),
  };
}
const model = (conditions: Record<string, Conditions>): ProxyModel => buildProxyModel([svc], [slice(conditions)], { name: 'n', labels: {}, nodePortAddresses: [] }, { externalIPAllowed: () => false });

test('agent: only active hosts take new connections; drained ones are the last resort and stay drainable', (t) => {
  const m = model({ '192.0.2.1': DRAINING, '192.0.2.2': ACTIVE, '198.51.100.1': STANDBY });
  t.deepEqual(m.ports[0]!.clusterEndpoints.map((e) => e.ip), ['192.0.2.2']);
  t.deepEqual(m.ports[0]!.terminatingEndpoints, ['192.0.2.1:3306'], 'IPVS keeps it at weight 0 instead of deleting it');
  const onlyDrained = model({ '192.0.2.1': DRAINING, '198.51.100.1': STANDBY });
  t.deepEqual(onlyDrained.ports[0]!.clusterEndpoints.map((e) => e.ip), ['192.0.2.1'], 'nothing ready: the drained host, never the standby');
});

test('agent: UDP flows of a drained host keep their conntrack entries; a host that left loses them', (t) => {
  const before = model({ '192.0.2.1': ACTIVE, '192.0.2.2': ACTIVE, '192.0.2.3': ACTIVE });
  const after = model({ '192.0.2.1': DRAINING, '192.0.2.2': ACTIVE, '192.0.2.3': DOWN });
  t.deepEqual(staleUdpEndpoints(before, after), [{ ip: '192.0.2.3', family: 4 }]);
  t.deepEqual(staleUdpEndpoints(after, after), [], 'an unchanged port is not looked at');
});
