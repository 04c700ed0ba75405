import test from 'ava';
import { desiredState, type HealthLookup, type ResolvedAddress } from '../../src/operator/desired.ts';
import { containsDesired } from '../../src/operator/reconciler.ts';
import { computeStatus } from '../../src/operator/status.ts';
import type { ExternalBackend, ExternalBackendSpec } from '../../src/api/external-backend.ts';

function backend(spec: Partial<ExternalBackendSpec>, name = 'web'): ExternalBackend {
  return {
    apiVersion: 'extbackend.io/v1alpha1',
    kind: 'ExternalBackend',
    metadata: { name, namespace: 'ns', uid: 'uid-1', generation: 2 },
    spec: { addresses: [], ports: [{ name: 'http', port: 80 }], ...spec },
  };
}

/** Resolution as the resolver does it for literal IPs. */
function literal(eb: ExternalBackend): ResolvedAddress[] {
  return eb.spec.addresses.map((a) => ({ spec: a, key: a.ip!, ips: [a.ip!] }));
}

type Slice = { metadata: { name: string; labels: Record<string, string>; annotations: Record<string, string>; ownerReferences: { uid: string }[] }; addressType: string; ports: { name: string; port: number }[]; endpoints: { addresses: string[]; conditions: { ready: boolean; serving: boolean; terminating: boolean }; nodeName?: string; zone?: string }[] };

test('a selectorless Service labelled for the agent, owned by the backend', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1' }], service: { topologyKeys: ['kubernetes.io/hostname', '*'], sessionAffinity: 'ClientIP' } });
  const svc = desiredState(eb, literal(eb)).service as unknown as { metadata: { labels: Record<string, string>; annotations: Record<string, string>; ownerReferences: { uid: string; controller: boolean }[] }; spec: Record<string, unknown> };
  t.is(svc.spec.selector, undefined);
  t.is(svc.metadata.labels['service.kubernetes.io/service-proxy-name'], 'extbackend');
  t.is(svc.metadata.annotations['extbackend.io/topology-keys'], 'kubernetes.io/hostname,*');
  t.deepEqual(svc.metadata.ownerReferences.map((o) => [o.uid, o.controller]), [['uid-1', true]]);
  t.deepEqual(svc.spec.sessionAffinityConfig, { clientIP: { timeoutSeconds: 10800 } });
  t.is(svc.spec.ipFamilyPolicy, 'PreferDualStack', 'IPv6 hosts get an IPv6 cluster IP where the cluster has one');
  const kp = desiredState(backend({ addresses: [{ ip: '192.0.2.1' }], service: { proxy: 'kube-proxy' } }), []).service;
  t.is(kp.metadata.labels?.['service.kubernetes.io/service-proxy-name'], undefined, 'kube-proxy mode leaves the proxy label off');
});

test('Headless becomes clusterIP None; type-specific fields only where the type allows', (t) => {
  const headless = desiredState(backend({ service: { type: 'Headless' } }), []).service.spec as Record<string, unknown>;
  t.is(headless.type, 'ClusterIP');
  t.is(headless.clusterIP, 'None');
  const np = desiredState(backend({ ports: [{ name: 'http', port: 80, nodePort: 30080 }], service: { type: 'NodePort', externalTrafficPolicy: 'Local' } }), []).service.spec as { ports: { nodePort?: number }[]; externalTrafficPolicy?: string };
  t.is(np.ports[0]!.nodePort, 30080);
  t.is(np.externalTrafficPolicy, 'Local');
});

test('IPv4 and IPv6 in separate slices, chunked, with the contract labels', (t) => {
  const addresses = [...Array.from({ length: 5 }, (_, i) => ({ ip: `192.0.2.${10 + i}` })), { ip: '2001:db8::1' }];
  const eb = backend({ addresses, endpoints: { maxEndpointsPerSlice: 2 } });
  const { slices } = desiredState(eb, literal(eb));
  const s = slices as unknown as Slice[];
  t.deepEqual(s.map((x) => [x.addressType, x.endpoints.length]), [['IPv4', 2], ['IPv4', 2], ['IPv4', 1], ['IPv6', 1]]);
  for (const x of s) {
    t.is(x.metadata.labels['kubernetes.io/service-name'], 'web');
    t.is(x.metadata.labels['endpointslice.kubernetes.io/managed-by'], 'operator.extbackend.io');
    t.is(x.metadata.labels['service.kubernetes.io/service-proxy-name'], 'extbackend', 'agents watch only slices with their label');
    t.is(x.metadata.ownerReferences[0]!.uid, 'uid-1');
  }
  // Slices of a Service the agent does not proxy do not carry its label either.
  for (const service of [{ proxy: 'kube-proxy' as const }, { type: 'Headless' as const }]) {
    const other = backend({ addresses, service });
    for (const x of desiredState(other, literal(other)).slices) t.is(x.metadata.labels?.['service.kubernetes.io/service-proxy-name'], undefined, JSON.stringify(service));
  }
  t.is(new Set(s.map((x) => x.metadata.name)).size, 4, 'deterministic, distinct names');
  t.deepEqual(desiredState(eb, literal(eb)).slices.map((x) => x.metadata.name), s.map((x) => x.metadata.name), 'same input, same names');
});

test('hosts with other target ports get their own slice; topology the slice API cannot carry goes in the annotation', (t) => {
  const eb = backend({
    addresses: [
      { ip: '192.0.2.1', nodeName: 'n1', zone: 'z1' },
      { ip: '192.0.2.2', targetPorts: { http: 8080 }, region: 'r1', weight: 5, topology: { rack: 'r7' } },
    ],
    ports: [{ name: 'http', port: 80 }],
  });
  const s = desiredState(eb, literal(eb)).slices as unknown as Slice[];
  t.is(s.length, 2);
  const by = Object.fromEntries(s.map((x) => [x.ports[0]!.port, x]));
  t.deepEqual(by[80]!.endpoints[0], { addresses: ['192.0.2.1'], conditions: { ready: true, serving: true, terminating: false }, nodeName: 'n1', zone: 'z1' });
  t.deepEqual(JSON.parse(by[8080]!.metadata.annotations['extbackend.io/endpoint-topology']!), { '192.0.2.2': { region: 'r1', topology: { rack: 'r7' }, weight: 5 } });
  t.is(by[80]!.metadata.annotations['extbackend.io/endpoint-topology'], undefined);
});

test('unhealthy endpoints are ready:false serving:false; a failing port does not take the healthy one down', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1' }, { ip: '192.0.2.2' }], ports: [{ name: 'a', port: 1 }, { name: 'b', port: 2 }] });
  const health: HealthLookup = (ip, port) => !(ip === '192.0.2.2' && port.name === 'b');
  const state = desiredState(eb, literal(eb), health);
  const s = state.slices as unknown as Slice[];
  const summary = s.map((x) => ({ ports: x.ports.map((p) => p.name).join(','), eps: x.endpoints.map((e) => `${e.addresses[0]}:${e.conditions.ready}/${e.conditions.serving}`) })).sort((x, y) => x.ports.localeCompare(y.ports));
  t.deepEqual(summary, [
    { ports: 'a', eps: ['192.0.2.2:true/true'] },
    { ports: 'a,b', eps: ['192.0.2.1:true/true'] },
    { ports: 'b', eps: ['192.0.2.2:false/false'] },
  ]);
  t.deepEqual([...state.portsWithReadyEndpoints], [['a', true], ['b', true]]);
  const eps = state.endpoints as unknown as { subsets: { addresses?: { ip: string }[]; notReadyAddresses?: { ip: string }[]; ports: { name: string }[] }[] };
  const b = eps.subsets.find((x) => x.ports.map((p) => p.name).join() === 'b')!;
  t.deepEqual(b.notReadyAddresses?.map((a) => a.ip), ['192.0.2.2']);
});

test('legacy Endpoints carry skip-mirror and can be turned off', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1' }] });
  t.is(desiredState(eb, literal(eb)).endpoints?.metadata.labels?.['endpointslice.kubernetes.io/skip-mirror'], 'true');
  t.is(desiredState(backend({ addresses: [{ ip: '192.0.2.1' }], endpoints: { legacyEndpoints: false } }), []).endpoints, undefined);
});

test('semantic problems: unknown port in targetPorts, repeated addresses', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1', targetPorts: { grpc: 9000 } }, { ip: '192.0.2.1' }] });
  const { problems, slices } = desiredState(eb, literal(eb));
  t.is(problems.length, 2);
  t.regex(problems[0]!, /targetPorts names port "grpc"/);
  t.regex(problems[1]!, /repeats addresses\[0\]/);
  t.is((slices[0] as unknown as Slice).endpoints.length, 1, 'a repeated IP is one endpoint');
});

test('status: counts, conditions, state; transition times kept while a condition holds', (t) => {
  const eb = backend({ addresses: [{ ip: '192.0.2.1' }, { ip: '192.0.2.2' }] });
  const resolved = literal(eb);
  const health: HealthLookup = (ip) => ip === '192.0.2.1';
  const s1 = computeStatus({ eb, resolved, health, desired: desiredState(eb, resolved, health), now: 't1', clusterIP: '10.96.0.5' });
  t.is(s1.ready, '1/2');
  t.is(s1.state, 'Degraded');
  const cond = (s: typeof s1, type: string) => s.conditions!.find((c) => c.type === type)!;
  t.is(cond(s1, 'Ready').status, 'True');
  t.is(cond(s1, 'Degraded').status, 'True');
  t.regex(cond(s1, 'Degraded').message, /192\.0\.2\.2/);
  t.is(s1.observedGeneration, 2);

  const later = { ...eb, status: s1 };
  const s2 = computeStatus({ eb: later, resolved, health: () => false, desired: desiredState(later, resolved, () => false), now: 't2' });
  t.is(s2.state, 'NotReady');
  t.is(cond(s2, 'Ready').reason, 'NoReadyAddresses');
  t.is(cond(s2, 'Ready').lastTransitionTime, 't2');
  t.is(cond(s2, 'Degraded').lastTransitionTime, 't1', 'Degraded stayed True: its time is kept');

  const conflict = computeStatus({ eb, resolved, health, desired: desiredState(eb, resolved, health), now: 't3', conflict: { reason: 'ServiceConflict', message: 'not ours' } });
  t.is(conflict.state, 'Rejected');
  t.is(cond(conflict, 'Accepted').reason, 'ServiceConflict');
});

test('status: a healthy host of a family the Service has no cluster IP for is not ready, and says why', (t) => {
  const eb = backend({ addresses: [{ ip: '2001:db8::1' }] });
  const resolved = literal(eb);
  const health: HealthLookup = () => true;
  const single = computeStatus({ eb, resolved, health, desired: desiredState(eb, resolved, health), now: 't1', clusterIP: '10.96.0.5', serviceFamilies: [4] });
  t.is(single.state, 'NotReady');
  t.is(single.addresses![0]!.reason, 'NoClusterIPForFamily');
  t.regex(single.addresses![0]!.message!, /no IPv6 cluster IP/);
  t.is(single.conditions!.find((c) => c.type === 'Ready')!.status, 'False');
  const dual = computeStatus({ eb, resolved, health, desired: desiredState(eb, resolved, health), now: 't1', clusterIP: '10.96.0.5', serviceFamilies: [4, 6] });
  t.is(dual.state, 'Ready');
});

test('containsDesired ignores server defaults but not changed or missing list items', (t) => {
  const desired = { spec: { ports: [{ port: 80 }], type: 'ClusterIP' } };
  t.true(containsDesired({ spec: { ports: [{ port: 80, protocol: 'TCP' }], type: 'ClusterIP', clusterIP: '10.0.0.1' } }, desired));
  t.false(containsDesired({ spec: { ports: [{ port: 81 }], type: 'ClusterIP' } }, desired));
  t.false(containsDesired({ spec: { ports: [{ port: 80 }, { port: 81 }], type: 'ClusterIP' } }, desired));
  t.false(containsDesired({ spec: { ports: [{ port: 80 }] } }, desired));
});
