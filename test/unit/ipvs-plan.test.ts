// The IPVS plan (what virtual servers, addresses and set entries a model needs) and
// the diff against the kernel's state (which ipvsadm commands, and never on servers
// that are not ours).
import test from 'ava';
import { diffIpvs, parseIpvsSave, afterApply } from '../../src/agent/ipvs/diff.ts';
import { IpvsPlanner, ipsetNames, type IpvsPlanOptions } from '../../src/agent/ipvs/plan.ts';
import { buildProxyModel, type NodeInput, type ServiceInput, type SliceInput } from '../../src/agent/model.ts';

const node: NodeInput = { name: 'node-a', labels: { 'topology.kubernetes.io/zone': 'zone-a' }, nodePortAddresses: [] };
const options: IpvsPlanOptions = { scheduler: 'rr', nodeAddresses: ['192.168.5.10', 'fd00::10'] };
const sets = ipsetNames(4);

function service(spec: ServiceInput['spec'] = {}): ServiceInput {
  return { metadata: { name: 'web', namespace: 'ns' }, spec: { clusterIP: '10.96.0.10', ports: [{ name: 'http', port: 80, protocol: 'TCP', nodePort: 30080 }], ...spec } };
}

function slice(endpoints: { ip: string; ready?: boolean; terminating?: boolean; nodeName?: string; weight?: number }[]): SliceInput {
  const topology = Object.fromEntries(endpoints.filter((e) => e.weight).map((e) => [e.ip, { weight: e.weight }]));
  return {
    metadata: { name: 'web-1', namespace: 'ns', labels: { 'kubernetes.io/service-name': 'web' }, annotations: { 'extbackend.io/endpoint-topology': JSON.stringify(topology) } },
    addressType: 'IPv4',
    ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
    endpoints: endpoints.map((e) => ({ addresses: [e.ip], conditions: { ready: e.ready ?? true, serving: e.ready ?? true ? true : !!e.terminating, terminating: e.terminating ?? false }, ...(e.nodeName ? { nodeName: e.nodeName } : {}) })),
  };
}

const plan = (svc: ServiceInput, slices: SliceInput[], o = options) => new IpvsPlanner().plan(buildProxyModel([svc], slices, node, { externalIPAllowed: () => true }), 4, o);

test('cluster IP and node ports become virtual servers with weighted real servers', (t) => {
  const p = plan(service({ type: 'NodePort' }), [slice([{ ip: '198.18.0.1' }, { ip: '198.18.0.2', weight: 3 }])]);
  t.deepEqual([...p.services.keys()].sort(), ['-t 10.96.0.10:80', '-t 192.168.5.10:30080']);
  const vs = p.services.get('-t 10.96.0.10:80')!;
  t.is(vs.scheduler, 'wrr', 'rr ignores weights, so unequal weights use wrr');
  t.deepEqual(vs.reals, [{ address: '198.18.0.1', port: 8080, weight: 1 }, { address: '198.18.0.2', port: 8080, weight: 3 }]);
  t.deepEqual([...p.vips], ['10.96.0.10'], 'only service addresses go on the dummy interface, not node addresses');
  t.deepEqual([...p.sets[sets.masq]!].sort(), ['10.96.0.10,tcp:80', '192.168.5.10,tcp:30080']);
  t.deepEqual([...p.sets[sets.owned]!].sort(), ['10.96.0.10,tcp:80', '192.168.5.10,tcp:30080']);
  t.is(p.sets[sets.reject]!.size, 0);
});

test('equal weights keep the configured scheduler; affinity is persistence', (t) => {
  const p = plan(service({ sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 600 } } }), [slice([{ ip: '198.18.0.1' }, { ip: '198.18.0.2' }])], { ...options, scheduler: 'lc' });
  const vs = p.services.get('-t 10.96.0.10:80')!;
  t.is(vs.scheduler, 'lc');
  t.is(vs.persistence, 600);
});

test('no endpoints: no virtual server, the frontend is in the reject set', (t) => {
  const p = plan(service({ type: 'NodePort' }), [slice([{ ip: '198.18.0.1', ready: false }])]);
  t.is(p.services.size, 0);
  t.deepEqual([...p.sets[sets.reject]!].sort(), ['10.96.0.10,tcp:80', '192.168.5.10,tcp:30080']);
  t.deepEqual([...p.vips], ['10.96.0.10'], 'the VIP stays, so the reject rule sees local traffic');
});

test('externalTrafficPolicy Local: node ports only to local endpoints and not masqueraded', (t) => {
  const p = plan(service({ type: 'NodePort', externalTrafficPolicy: 'Local' }), [slice([{ ip: '198.18.0.1', nodeName: 'node-a' }, { ip: '198.18.0.2' }])]);
  t.deepEqual(p.services.get('-t 192.168.5.10:30080')!.reals.map((r) => r.address), ['198.18.0.1']);
  t.deepEqual(p.services.get('-t 10.96.0.10:80')!.reals.map((r) => r.address), ['198.18.0.1', '198.18.0.2']);
  t.deepEqual([...p.sets[sets.masq]!], ['10.96.0.10,tcp:80']);
});

test('parses ipvsadm-save, IPv4 and IPv6, persistence and weights', (t) => {
  const saved = ['-A -t 10.96.0.10:80 -s wrr -p 600', '-a -t 10.96.0.10:80 -r 198.18.0.1:8080 -m -w 2', '-A -u [fd00::a]:53 -s rr', '-a -u [fd00::a]:53 -r [fd00::1]:53 -m -w 1', '-A -f 7 -s rr'].join('\n');
  const parsed = parseIpvsSave(saved);
  t.deepEqual([...parsed.keys()], ['-t 10.96.0.10:80', '-u [fd00::a]:53']);
  t.deepEqual(parsed.get('-t 10.96.0.10:80'), { protocol: 'tcp', address: '10.96.0.10', port: 80, scheduler: 'wrr', persistence: 600, reals: [{ address: '198.18.0.1', port: 8080, weight: 2 }] });
  t.deepEqual(parsed.get('-u [fd00::a]:53')!.reals, [{ address: 'fd00::1', port: 53, weight: 1 }]);
});

test('diff: creates, edits, deletes only what differs and only what is ours', (t) => {
  const wanted = plan(service(), [slice([{ ip: '198.18.0.1' }, { ip: '198.18.0.3', weight: 2 }])]).services;
  const kernel = parseIpvsSave(['-A -t 10.96.0.10:80 -s rr', '-a -t 10.96.0.10:80 -r 198.18.0.1:8080 -m -w 1', '-a -t 10.96.0.10:80 -r 198.18.0.2:8080 -m -w 1', '-A -t 10.0.0.1:443 -s rr', '-A -t 10.96.0.99:80 -s rr'].join('\n'));
  const d = diffIpvs(kernel, wanted, new Set(['-t 10.96.0.10:80', '-t 10.96.0.99:80']));
  t.deepEqual(d.commands, ['-E -t 10.96.0.10:80 -s wrr', '-a -t 10.96.0.10:80 -r 198.18.0.3:8080 -m -w 2', '-d -t 10.96.0.10:80 -r 198.18.0.2:8080', '-D -t 10.96.0.99:80']);
  t.false(d.commands.some((c) => c.includes('10.0.0.1')), 'a virtual server that is not ours is never touched');
  // Applied, the same diff is empty: idempotent.
  const after = afterApply(kernel, wanted, d);
  t.deepEqual(diffIpvs(after, wanted, new Set(['-t 10.96.0.10:80'])).commands, []);
});

test('diff: a wanted server that exists but is not ours is a conflict, not taken over', (t) => {
  const wanted = plan(service(), [slice([{ ip: '198.18.0.1' }])]).services;
  const kernel = parseIpvsSave('-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 203.0.113.9:80 -m -w 1');
  const d = diffIpvs(kernel, wanted, new Set());
  t.deepEqual(d.commands, []);
  t.deepEqual(d.conflicts, ['-t 10.96.0.10:80']);
});

test('diff: a dead host is removed at once, a terminating one drains at weight 0', (t) => {
  const kernel = parseIpvsSave(['-A -t 10.96.0.10:80 -s rr', ...['198.18.0.1', '198.18.0.2', '198.18.0.3'].map((ip) => `-a -t 10.96.0.10:80 -r ${ip}:8080 -m -w 1`)].join('\n'));
  const wanted = plan(service(), [slice([{ ip: '198.18.0.1' }, { ip: '198.18.0.2', ready: false }, { ip: '198.18.0.3', ready: false, terminating: true }])]).services;
  const d = diffIpvs(kernel, wanted, new Set(['-t 10.96.0.10:80']));
  t.deepEqual(d.commands, ['-d -t 10.96.0.10:80 -r 198.18.0.2:8080', '-e -t 10.96.0.10:80 -r 198.18.0.3:8080 -m -w 0']);
});

test('diff: skips servers the caller knows are unchanged', (t) => {
  const wanted = plan(service(), [slice([{ ip: '198.18.0.1' }])]).services;
  const d = diffIpvs(new Map(), wanted, new Set(), () => true);
  t.deepEqual(d.commands, []);
});
