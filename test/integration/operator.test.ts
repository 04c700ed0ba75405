// The operator against the real API server and controller-manager.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { applyYaml, kubectl, testNamespace, waitFor } from '../helpers/cluster.ts';
import { startTestDnsServer } from '../helpers/dns-server.ts';
import { startTestOperator } from '../helpers/operator.ts';

interface Obj {
  metadata: { name: string; uid: string; labels?: Record<string, string>; annotations?: Record<string, string>; ownerReferences?: { kind: string; name: string; controller?: boolean }[] };
  spec?: Record<string, unknown>;
  status?: { state?: string; ready?: string; clusterIP?: string; conditions?: { type: string; status: string; reason: string; message: string }[]; addresses?: { address: string; ready: boolean; message?: string }[] };
  [k: string]: unknown;
}

async function get(ns: string, kind: string, name: string): Promise<Obj | undefined> {
  const { stdout } = await kubectl(['-n', ns, 'get', kind, name, '-o', 'json', '--ignore-not-found']);
  return stdout.trim() ? (JSON.parse(stdout) as Obj) : undefined;
}

async function list(ns: string, kind: string, selector: string): Promise<Obj[]> {
  const { stdout } = await kubectl(['-n', ns, 'get', kind, '-l', selector, '-o', 'json']);
  return (JSON.parse(stdout) as { items: Obj[] }).items;
}

function condition(o: Obj | undefined, type: string) {
  return o?.status?.conditions?.find((c) => c.type === type);
}

async function waitForState(ns: string, name: string, state: string, timeoutMs = 30_000): Promise<Obj> {
  let last: unknown;
  try {
    return await waitFor(`ExternalBackend ${ns}/${name} to be ${state}`, async () => {
      const xb = await get(ns, 'externalbackend', name);
      last = xb?.status;
      return xb?.status?.state === state ? xb : false;
    }, { timeoutMs });
  } catch (err) {
    throw new Error(`${(err as Error).message}; last status: ${JSON.stringify(last)}`);
  }
}

function sample(file: string, ns: string): string {
  return readFileSync(path.join(REPO_ROOT, 'samples', file), 'utf8').replace(/namespace: .*/g, `namespace: ${ns}`);
}

type Slice = Obj & { addressType: string; ports: { port: number }[]; endpoints: { addresses: string[]; conditions: Record<string, boolean>; nodeName?: string }[] };

for (const [file, name, addresses] of [
  ['etcd-external.yaml', 'etcd-k8s', 3],
  ['httpd-external.yaml', 'http-external', 2],
  ['nodeport-topology.yaml', 'cache-nodeport', 3],
] as const) {
  test(`sample ${file}: selectorless Service, labelled slices, skip-mirror Endpoints, no mirrored slices`, async (t) => {
    const ns = await testNamespace(t);
    await startTestOperator(t, ns);
    await applyYaml(sample(file, ns));
    const xb = await waitForState(ns, name, 'Ready');
    t.is(xb.status?.ready, `${addresses}/${addresses}`);

    const svc = (await get(ns, 'service', name))!;
    t.is(svc.spec?.selector, undefined, 'no selector');
    t.is(svc.metadata.labels?.['service.kubernetes.io/service-proxy-name'], 'extbackend');
    t.deepEqual(svc.metadata.ownerReferences?.map((o) => [o.kind, o.name, o.controller]), [['ExternalBackend', name, true]]);
    t.is(xb.status?.clusterIP, svc.spec?.clusterIP as string);

    const slices = (await list(ns, 'endpointslices', `kubernetes.io/service-name=${name}`)) as Slice[];
    t.is(slices.length, 1);
    const slice = slices[0]!;
    t.is(slice.metadata.labels?.['endpointslice.kubernetes.io/managed-by'], 'operator.extbackend.io');
    t.is(slice.endpoints.length, addresses);
    for (const e of slice.endpoints) t.deepEqual(e.conditions, { ready: true, serving: true, terminating: false });

    const eps = (await get(ns, 'endpoints', name))!;
    t.is(eps.metadata.labels?.['endpointslice.kubernetes.io/skip-mirror'], 'true');
    // Give the mirroring controller time to act if it were going to.
    await new Promise((r) => setTimeout(r, 2000));
    const all = await list(ns, 'endpointslices', `kubernetes.io/service-name=${name}`);
    t.deepEqual(all.map((s) => s.metadata.labels?.['endpointslice.kubernetes.io/managed-by']), ['operator.extbackend.io'], 'no mirrored slices');

    const table = (await kubectl(['-n', ns, 'get', 'externalbackends'])).stdout;
    t.regex(table, /NAME\s+READY\s+TYPE\s+CLUSTER-IP\s+STATUS\s+ACTIVE\s+AGE/);
    t.regex(table, new RegExp(`${name}\\s+${addresses}/${addresses}\\s+(ClusterIP|NodePort)\\s+10\\.96\\.\\d+\\.\\d+\\s+Ready\\s+0\\s`));
  });
}

test('edits: addresses added and removed, ports changed, type changes to and from Headless', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  const base = (addresses: string, ports: string, service = '{}') => `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: web, namespace: ${ns}}
spec:
  addresses: ${addresses}
  ports: ${ports}
  service: ${service}
`;
  await applyYaml(base('[{ip: 198.51.100.1}, {ip: 198.51.100.2}]', '[{name: http, port: 80}]'));
  await waitForState(ns, 'web', 'Ready');
  const firstUid = (await get(ns, 'service', 'web'))!.metadata.uid;

  await applyYaml(base('[{ip: 198.51.100.2}, {ip: 198.51.100.3}, {ip: "2001:db8::3"}]', '[{name: http, port: 80, targetPort: 8080}, {name: metrics, port: 9100}]'));
  const slices = await waitFor('slices for the edited addresses and ports', async () => {
    const s = (await list(ns, 'endpointslices', 'kubernetes.io/service-name=web')) as Slice[];
    const ips = s.flatMap((x) => x.endpoints.flatMap((e) => e.addresses)).sort();
    return ips.join() === '198.51.100.2,198.51.100.3,2001:db8::3' && s.every((x) => x.ports.length === 2) ? s : false;
  });
  t.deepEqual(slices.map((s) => s.addressType).sort(), ['IPv4', 'IPv6']);
  t.deepEqual(slices[0]!.ports.map((p) => p.port).sort(), [8080, 9100]);
  const svcPorts = ((await get(ns, 'service', 'web'))!.spec!.ports as { port: number }[]).map((p) => p.port);
  t.deepEqual(svcPorts, [80, 9100]);

  await applyYaml(base('[{ip: 198.51.100.2}]', '[{name: http, port: 80}]', '{type: Headless}'));
  const headless = await waitFor('the Service to be recreated as headless', async () => {
    const svc = await get(ns, 'service', 'web');
    return svc?.spec?.clusterIP === 'None' ? svc : false;
  });
  t.not(headless.metadata.uid, firstUid, 'clusterIP is immutable: a new Service');
  const events = (await kubectl(['-n', ns, 'get', 'events', '--field-selector', 'reason=RecreatingService', '-o', 'name'])).stdout;
  t.truthy(events.trim(), 'an Event tells about the recreation');
  t.is(headless.metadata.labels?.['service.kubernetes.io/service-proxy-name'], undefined, 'nothing for the agent to program');

  await applyYaml(base('[{ip: 198.51.100.2}]', '[{name: http, port: 80}]', '{type: NodePort}'));
  const np = await waitFor('the Service to be a NodePort again with a cluster IP', async () => {
    const svc = await get(ns, 'service', 'web');
    return svc?.spec?.type === 'NodePort' && svc.spec.clusterIP !== 'None' ? svc : false;
  });
  t.regex(np.spec!.clusterIP as string, /^10\.96\./);
  t.true(((np.spec!.ports as { nodePort?: number }[])[0]!.nodePort ?? 0) >= 30000);
  await waitForState(ns, 'web', 'Ready');
});

test('deletion garbage-collects the Service, slices and Endpoints', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  await applyYaml(sample('httpd-external.yaml', ns));
  await waitForState(ns, 'http-external', 'Ready');
  await kubectl(['-n', ns, 'delete', 'externalbackend', 'http-external']);
  await waitFor('owned objects to be garbage-collected', async () => {
    const left = await kubectl(['-n', ns, 'get', 'services,endpointslices,endpoints', '-l', 'extbackend.io/backend=http-external', '-o', 'name']);
    return left.stdout.trim() === '' ? true : left.stdout.trim();
  }, { timeoutMs: 90_000 });
  t.pass();
});

test('repairs a hand-deleted slice and a hand-edited Service; a settled operator makes no writes', async (t) => {
  const ns = await testNamespace(t);
  const op = await startTestOperator(t, ns);
  await applyYaml(sample('httpd-external.yaml', ns));
  await waitForState(ns, 'http-external', 'Ready');
  await op.settle();

  const [slice] = await list(ns, 'endpointslices', 'kubernetes.io/service-name=http-external');
  await kubectl(['-n', ns, 'delete', 'endpointslice', slice!.metadata.name]);
  const repaired = await waitFor('the slice to be recreated', async () => {
    const s = await get(ns, 'endpointslice', slice!.metadata.name);
    return s && s.metadata.uid !== slice!.metadata.uid ? s : false;
  });
  t.is((repaired as Slice).endpoints.length, 2);

  await kubectl(['-n', ns, 'patch', 'service', 'http-external', '--type=json', '-p', '[{"op":"replace","path":"/spec/ports/0/port","value":8081}]']);
  await waitFor('the Service port to be restored', async () => {
    const svc = await get(ns, 'service', 'http-external');
    return (svc?.spec?.ports as { port: number }[] | undefined)?.[0]?.port === 80;
  });
  await op.settle();
  const before = op.writes.length;
  await new Promise((r) => setTimeout(r, 1500));
  await op.settle();
  t.is(op.writes.length, before, 'nothing changed, nothing written');
});

test('an operator restart with nothing changed makes zero writes', async (t) => {
  const ns = await testNamespace(t);
  const first = await startTestOperator(t, ns);
  await applyYaml(sample('httpd-external.yaml', ns));
  // Node ports are cluster-wide: let the API server pick one, so parallel tests do not collide.
  await applyYaml(sample('nodeport-topology.yaml', ns).replace(/\n\s*nodePort: \d+/, ''));
  await waitForState(ns, 'http-external', 'Ready');
  await waitForState(ns, 'cache-nodeport', 'Ready');
  await first.settle();
  t.true(first.writes.length >= 6, `the first run wrote the objects (${first.writes.join(', ')})`);
  await first.stop();

  const second = await startTestOperator(t, ns);
  await second.settle();
  const reconciles = (await second.running.metrics.render()).match(/extbackend_reconcile_total\{controller="externalbackend",result="success"\} (\d+)/);
  t.true(Number(reconciles?.[1]) >= 2, 'it did reconcile both backends');
  t.deepEqual(second.writes, [], 'and wrote nothing');
});

test('never takes over a foreign Service: condition, Event, nothing overwritten', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  await applyYaml(`
apiVersion: v1
kind: Service
metadata: {name: taken, namespace: ${ns}, labels: {owner: someone-else}}
spec: {ports: [{port: 5432}], selector: {app: db}}
`);
  const before = (await get(ns, 'service', 'taken'))!;
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: taken, namespace: ${ns}}
spec: {addresses: [{ip: 198.51.100.9}], ports: [{port: 80}]}
`);
  const xb = await waitForState(ns, 'taken', 'Rejected');
  t.is(condition(xb, 'Accepted')?.reason, 'ServiceConflict');
  t.regex(condition(xb, 'Accepted')!.message, /not owned by this ExternalBackend/);
  const after = (await get(ns, 'service', 'taken'))!;
  t.is(after.metadata.labels?.['extbackend.io/backend'], undefined);
  t.deepEqual(after.spec, before.spec, 'the foreign Service is unchanged');
  t.deepEqual(await list(ns, 'endpointslices', 'extbackend.io/backend=taken'), [], 'no slices attached to a foreign Service');
  const events = await waitFor('a ServiceConflict event', async () => (await kubectl(['-n', ns, 'get', 'events', '--field-selector', 'reason=ServiceConflict', '-o', 'name'])).stdout.trim() || false);
  t.truthy(events);
});

test('addresses inside the cluster service CIDR are refused with a reason', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: sneaky, namespace: ${ns}}
spec: {addresses: [{ip: 198.51.100.9}, {ip: 10.96.0.1}], ports: [{port: 443}]}
`);
  const xb = await waitForState(ns, 'sneaky', 'Degraded');
  t.is(xb.status?.ready, '1/2');
  const refused = xb.status?.addresses?.find((a) => a.address === '10.96.0.1');
  t.false(refused?.ready);
  t.regex(refused?.message ?? '', /service CIDR 10\.96\.0\.0\/\d+/);
  const [slice] = (await list(ns, 'endpointslices', 'kubernetes.io/service-name=sneaky')) as Slice[];
  t.deepEqual(slice!.endpoints.map((e) => e.addresses[0]), ['198.51.100.9'], 'the refused address is not published');
});

test('a Node\'s addresses and pod CIDR are refused, and follow the Node when it changes', async (t) => {
  const ns = await testNamespace(t);
  const node = `facts-${ns}`;
  // A Node of no kubelet, with addresses no other test uses (the whole cluster's operators see it).
  await applyYaml(`{apiVersion: v1, kind: Node, metadata: {name: ${node}}, spec: {podCIDRs: [198.51.104.0/24]}}`);
  t.teardown(() => kubectl(['delete', 'node', node, '--ignore-not-found', '--wait=false']));
  const setAddress = (ip: string) => kubectl(['patch', 'node', node, '--subresource=status', '--type=merge', '-p', JSON.stringify({ status: { addresses: [{ type: 'InternalIP', address: ip }, { type: 'Hostname', address: node }] } })]);
  await setAddress('198.51.100.231');
  await startTestOperator(t, ns);
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: on-nodes, namespace: ${ns}}
spec: {addresses: [{ip: 198.51.100.231}, {ip: 198.51.104.7}, {ip: 198.51.100.232}], ports: [{port: 443}]}
`);
  const refusal = async (ip: string): Promise<string | undefined> => (await get(ns, 'externalbackend', 'on-nodes'))?.status?.addresses?.find((a) => a.address === ip && !a.ready)?.message;
  await waitFor('the node address and the pod address refused', async () => (await refusal('198.51.100.231')) && (await refusal('198.51.104.7')));
  t.regex((await refusal('198.51.100.231'))!, /node/i);
  t.regex((await refusal('198.51.104.7'))!, /pod CIDR 198\.51\.104\.0\/24/);
  t.is(await refusal('198.51.100.232'), undefined);
  // The Node's address moves: the old one is allowed again, the new one refused.
  await setAddress('198.51.100.232');
  await waitFor('the refusal to follow the Node', async () => !(await refusal('198.51.100.231')) && (await refusal('198.51.100.232')));
  t.truthy(await refusal('198.51.104.7'));
});

test('legacyEndpoints false: no Endpoints object, and an existing one is removed', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  const xb = (legacy: boolean) => `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: modern, namespace: ${ns}}
spec: {addresses: [{ip: 198.51.100.9}], ports: [{port: 80}], endpoints: {legacyEndpoints: ${legacy}}}
`;
  await applyYaml(xb(true));
  await waitFor('the Endpoints object', () => get(ns, 'endpoints', 'modern'));
  await applyYaml(xb(false));
  await waitFor('the Endpoints object to be removed', async () => (await get(ns, 'endpoints', 'modern')) === undefined);
  t.pass();
});

const invalid: [string, string, RegExp][] = [
  ['loopback IP', 'addresses: [{ip: 127.0.0.1}]\n  ports: [{port: 80}]', /must not be a loopback address/],
  ['metadata IP', 'addresses: [{ip: 169.254.169.254}]\n  ports: [{port: 80}]', /must not be a link-local address/],
  ['unspecified IP', 'addresses: [{ip: "::"}]\n  ports: [{port: 80}]', /must not be the unspecified address/],
  ['multicast IP', 'addresses: [{ip: 239.0.0.1}]\n  ports: [{port: 80}]', /must not be a multicast address/],
  ['malformed IP', 'addresses: [{ip: 300.1.1.1}]\n  ports: [{port: 80}]', /must be a valid IPv4 or IPv6 address/],
  ['ip and hostname', 'addresses: [{ip: 198.51.100.1, hostname: a.example}]\n  ports: [{port: 80}]', /set exactly one of ip or hostname/],
  ['localhost hostname', 'addresses: [{hostname: localhost}]\n  ports: [{port: 80}]', /must not be localhost/],
  ['port out of range', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 70000}]', /should be less than or equal to 65535/],
  ['duplicate port names', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{name: a, port: 80}, {name: a, port: 81}]', /port names must be unique/],
  ['duplicate port numbers', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{name: a, port: 80}, {name: b, port: 80}]', /port numbers must be unique per protocol/],
  ['unnamed ports', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}, {port: 81}]', /every port needs a name/],
  ['"*" not last', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {topologyKeys: ["*", zone]}', /"\*" may only be the last topology key/],
  ['too many topologyKeys', `addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {topologyKeys: [${Array.from({ length: 17 }, (_, i) => `k${i}`).join(', ')}]}`, /must have at most 16 items/],
  ['topologyKeys with ETP Local', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {type: NodePort, externalTrafficPolicy: Local, topologyKeys: ["*"]}', /topologyKeys cannot be combined with externalTrafficPolicy Local/],
  ['ETP on ClusterIP', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {externalTrafficPolicy: Local}', /externalTrafficPolicy applies only to NodePort and LoadBalancer/],
  ['nodePort on ClusterIP', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80, nodePort: 30080}]', /nodePort can only be set when service.type is NodePort or LoadBalancer/],
  ['affinity timeout too long', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {sessionAffinity: ClientIP, sessionAffinityTimeoutSeconds: 86401}', /less than or equal to 86400/],
  ['timeout without affinity', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {sessionAffinityTimeoutSeconds: 60}', /sessionAffinityTimeoutSeconds needs sessionAffinity ClientIP/],
  ['healthCheckNodePort on NodePort', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {type: NodePort, healthCheckNodePort: 30999}', /healthCheckNodePort applies only to a LoadBalancer/],
  ['clusterIP on Headless', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80}]\n  service: {type: Headless, clusterIP: 10.96.0.50}', /clusterIP cannot be set on a Headless service/],
  ['no addresses', 'addresses: []\n  ports: [{port: 80}]', /should have at least 1 items/],
  ['weight out of range', 'addresses: [{ip: 198.51.100.1, weight: 0}]\n  ports: [{port: 80}]', /should be greater than or equal to 1/],
];

test('the CRD rejects invalid specs with a message a person understands', async (t) => {
  const ns = await testNamespace(t);
  for (const [what, spec, message] of invalid) {
    const yaml = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: bad, namespace: ${ns}}\nspec:\n  ${spec}\n`;
    const err = await t.throwsAsync(kubectl(['apply', '--dry-run=server', '-f', '-'], yaml), undefined, what);
    t.regex(err?.message ?? '', message, what);
  }
  const badName = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: 9lives, namespace: ${ns}}\nspec: {addresses: [{ip: 198.51.100.1}], ports: [{port: 80}]}\n`;
  const err = await t.throwsAsync(kubectl(['apply', '--dry-run=server', '-f', '-'], badName));
  t.regex(err?.message ?? '', /becomes the Service's name/);
});

test('two replicas: exactly one writes; when it stops the other takes over within the lease time', async (t) => {
  const ns = await testNamespace(t);
  // Replica a is stopped below as if it crashed: it does not hand the lease back.
  const a = await startTestOperator(t, ns, { leaderElect: true, identity: 'replica-a', releaseLeaseOnStop: false });
  await waitFor('replica a to lead', async () => (await get(ns, 'lease', 'extbackend-operator'))?.spec?.holderIdentity === 'replica-a');
  const b = await startTestOperator(t, ns, { leaderElect: true, identity: 'replica-b' });
  await applyYaml(sample('httpd-external.yaml', ns));
  await waitForState(ns, 'http-external', 'Ready');
  await a.settle();
  t.true(a.writes.length > 0, 'the leader wrote');
  t.deepEqual(b.writes, [], 'the standby wrote nothing');

  // The leader dies without releasing the lease: the standby must wait it out (15 s).
  const killedAt = Date.now();
  await a.stop();
  await kubectl(['-n', ns, 'patch', 'externalbackend', 'http-external', '--type=merge', '-p', '{"spec":{"addresses":[{"ip":"198.51.100.77"}]}}']);
  await waitFor('replica b to take over and reconcile the edit', async () => {
    const s = (await list(ns, 'endpointslices', 'kubernetes.io/service-name=http-external')) as Slice[];
    return s[0]?.endpoints[0]?.addresses[0] === '198.51.100.77';
  }, { timeoutMs: 40_000 });
  const tookMs = Date.now() - killedAt;
  // Lease duration + two retry periods, plus room for kubectl's patch, the reconcile and the
  // polling: on a loaded CI machine (load 17-28) those alone took up to 8 s.
  t.true(tookMs < 15_000 + 2_000 * 2 + 12_000, `took over in ${tookMs} ms`);
  t.true(b.writes.length > 0, 'the new leader writes');
  t.is((await get(ns, 'lease', 'extbackend-operator'))?.spec?.holderIdentity, 'replica-b');
});

test('hostnames: A and AAAA become separate slices, re-resolved; an answer turning to loopback is refused', async (t) => {
  const ns = await testNamespace(t);
  const dns = await startTestDnsServer(1);
  t.teardown(() => dns.close());
  dns.records.set('db.example.test', ['198.51.100.50', '2001:db8::50']);
  await startTestOperator(t, ns, { dnsServers: [dns.address], dnsRefreshMs: 1000 });
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: db, namespace: ${ns}}
spec: {addresses: [{hostname: db.example.test}, {ip: 198.51.100.9}], ports: [{port: 5432}]}
`);
  const xb = await waitForState(ns, 'db', 'Ready');
  t.deepEqual(xb.status?.addresses?.find((a) => a.address === 'db.example.test'), { address: 'db.example.test', ips: ['198.51.100.50', '2001:db8::50'], ready: true, priority: 0, role: 'active' });
  const published = async () =>
    ((await list(ns, 'endpointslices', 'kubernetes.io/service-name=db')) as Slice[]).map((s) => `${s.addressType}:${s.endpoints.map((e) => e.addresses[0]).join('+')}`).sort().join(' ');
  t.is(await published(), 'IPv4:198.51.100.9+198.51.100.50 IPv6:2001:db8::50');

  dns.records.set('db.example.test', ['198.51.100.51']);
  await waitFor('the new answer to be published', async () => ((await published()) === 'IPv4:198.51.100.9+198.51.100.51' ? true : await published()));

  // DNS rebinding: the same name now points at the node itself.
  dns.records.set('db.example.test', ['127.0.0.1']);
  const rebound = await waitForState(ns, 'db', 'Degraded');
  const entry = rebound.status?.addresses?.find((a) => a.address === 'db.example.test');
  t.false(entry?.ready);
  t.regex(entry?.message ?? '', /127\.0\.0\.1 is a loopback address/);
  t.regex(condition(rebound, 'Degraded')!.message, /db\.example\.test/);
  t.is(await published(), 'IPv4:198.51.100.9');
});

test('/healthz, /readyz and /metrics are served', async (t) => {
  const ns = await testNamespace(t);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const op = await startTestOperator(t, ns, { httpAddress: `127.0.0.1:${port}` });
  await op.settle();
  const fetchText = async (p: string) => {
    const res = await fetch(`http://127.0.0.1:${port}${p}`);
    return { status: res.status, body: await res.text() };
  };
  t.deepEqual(await fetchText('/healthz'), { status: 200, body: 'ok\n' });
  t.deepEqual(await fetchText('/readyz'), { status: 200, body: 'ok\n' });
  await applyYaml(sample('httpd-external.yaml', ns));
  await waitForState(ns, 'http-external', 'Ready');
  const metrics = (await fetchText('/metrics')).body;
  t.regex(metrics, /extbackend_reconcile_total\{controller="externalbackend",result="success"\} [1-9]/);
  t.regex(metrics, /extbackend_api_writes_total\{verb="PATCH",resource="services"\} 1/);
  t.regex(metrics, /extbackend_reconcile_duration_seconds_count\{controller="externalbackend"\} [1-9]/);
  t.regex(metrics, /extbackend_workqueue_depth\{controller="externalbackend"\} 0/);
});
