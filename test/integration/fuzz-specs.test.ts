// Property-based fuzzing of the ExternalBackend API against the real API server and the
// real operator (issue 14). fast-check generates specs, valid and hostile; each one is
// either refused by the API server with a message, or accepted and given a status for its
// generation within STATUS_BOUND_MS. Meanwhile the operator (watching every namespace,
// on a control plane of its own) must never stop, log an unhandled rejection, or stop
// reconciling a healthy neighbour in another namespace.
//   EXTBACKEND_FUZZ_SEED=n    replay a run (the seed is printed)
//   EXTBACKEND_FUZZ_RUNS=n    cases (default 200)
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { Writable } from 'node:stream';
import test from 'ava';
import * as k8s from '@kubernetes/client-node';
import fc from 'fast-check';
import winston from 'winston';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { startLocalCluster } from '../../src/devcluster/cluster.ts';
import { OPERATOR_DEFAULTS, startOperator } from '../../src/operator/operator.ts';
import { ApiError, KubeClient, resourcePath } from '../../src/runtime/kube-client.ts';
import { kubectlAt, waitFor } from '../helpers/cluster.ts';
import { startTestDnsServer } from '../helpers/dns-server.ts';

const SEED = Number(process.env.EXTBACKEND_FUZZ_SEED ?? 14_2026);
const RUNS = Number(process.env.EXTBACKEND_FUZZ_RUNS ?? 200);
const BATCH = 25;
const STATUS_BOUND_MS = 30_000;

// Strings a hostile user would try, plus anything fast-check makes up.
const hostile = fc.oneof(
  fc.constantFrom('', ' ', '/a b', 'a\nb', 'a b\r\n', '€', '\u0000', '..', '-x-', 'UPPER', 'a/b', '*', 'x'.repeat(300), '%00', '\t'),
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'binary', maxLength: 20 }),
);
/** Mostly what a person would write, now and then something hostile: so both paths get cases. */
const mostly = <T>(valid: fc.Arbitrary<T>, weight = 20): fc.Arbitrary<T | string> => fc.oneof({ weight, arbitrary: valid }, { weight: 1, arbitrary: hostile });
/** A valid value nine times in ten, else an out-of-range one. */
const rarely = <T, U>(valid: fc.Arbitrary<T>, invalid: fc.Arbitrary<U>): fc.Arbitrary<T | U> => fc.oneof({ weight: 9, arbitrary: valid }, { weight: 1, arbitrary: invalid });
const label = mostly(fc.stringMatching(/^[a-z0-9]([-a-z0-9.]{0,20}[a-z0-9])?$/));
// Addresses are never contacted (the probe is replaced) and hostnames never leave the machine (a loopback DNS server).
const ip = mostly(fc.oneof(fc.integer({ min: 1, max: 254 }).map((n) => `198.51.100.${n}`), fc.integer({ min: 1, max: 254 }).map((n) => `203.0.113.${n}`), fc.integer({ min: 1, max: 0xffff }).map((n) => `2001:db8::${n.toString(16)}`), fc.constantFrom('127.0.0.1', '169.254.169.254', '0.0.0.0', '::', '10.96.0.1', '224.0.0.1'), fc.ipV4()), 8);
const topology = fc.record({ nodeName: label, zone: label, region: label, topology: fc.dictionary(mostly(fc.constantFrom('example.com/rack', 'rack')), label, { maxKeys: 2 }), weight: rarely(fc.integer({ min: 1, max: 256 }), fc.constantFrom(0, 257)) }, { requiredKeys: [] });
const address = fc.oneof(
  fc.tuple(fc.record({ ip }), topology).map(([a, b]) => ({ ...a, ...b })),
  fc.tuple(fc.record({ hostname: mostly(fc.domain()) }), topology).map(([a, b]) => ({ ...a, ...b })),
);
const addressOrBoth = fc.oneof({ weight: 15, arbitrary: address }, { weight: 1, arbitrary: fc.record({ ip, hostname: fc.domain() }) });
const portNumber = mostly(fc.integer({ min: 1, max: 65_535 }), 10) as fc.Arbitrary<number>;
const port = fc.record({ port: fc.oneof({ weight: 10, arbitrary: fc.integer({ min: 1, max: 65_535 }) }, { weight: 1, arbitrary: fc.integer({ min: -5, max: 70_000 }) }), targetPort: portNumber, protocol: rarely(fc.constantFrom('TCP', 'UDP', 'SCTP'), fc.constant('HTTP')), appProtocol: mostly(fc.constantFrom('http', 'kubernetes.io/h2c')) }, { requiredKeys: ['port'] });
const ports = fc.oneof(
  port.map((p) => [p]),
  fc.tuple(port, port).map(([a, b]) => [{ ...a, name: 'a' }, { ...b, name: 'b', port: a.port === b.port ? (a.port % 65_535) + 1 : b.port }]),
  fc.array(fc.record({ name: label, port: portNumber }), { maxLength: 3 }),
);
const service = fc.oneof(
  fc.constant({}),
  fc.record({ type: fc.constantFrom('ClusterIP', 'Headless'), sessionAffinity: fc.constantFrom('None', 'ClientIP'), publishNotReadyAddresses: fc.boolean(), proxy: fc.constantFrom('agent', 'kube-proxy') }, { requiredKeys: [] }),
  fc.record({ type: fc.constantFrom('NodePort', 'LoadBalancer'), externalTrafficPolicy: fc.constantFrom('Cluster', 'Local') }, { requiredKeys: ['type'] }),
  fc.record({ topologyKeys: fc.array(mostly(fc.constantFrom('kubernetes.io/hostname', 'topology.kubernetes.io/zone')), { maxLength: 3 }).map((k) => [...k, '*']) }),
  fc.record({ type: rarely(fc.constant('ClusterIP'), fc.constant('ExternalName')), clusterIP: mostly(fc.constantFrom('10.96.200.9', '198.51.100.1')), sessionAffinityTimeoutSeconds: fc.integer({ min: -1, max: 90_000 }) }, { requiredKeys: [] }),
);
const timing = { periodSeconds: fc.integer({ min: 1, max: 5 }), timeoutSeconds: rarely(fc.constant(1), fc.constantFrom(0, 61)), failureThreshold: rarely(fc.integer({ min: 1, max: 10 }), fc.constantFrom(0, 11)) };
const healthCheck = fc.oneof(
  fc.record({ type: rarely(fc.constant('tcp'), fc.constant('icmp')), port: fc.oneof(portNumber, label), ...timing }, { requiredKeys: ['type'] }),
  fc.record({
    type: fc.constantFrom('http', 'https'),
    ...timing,
    http: fc.record({
      path: mostly(fc.oneof(fc.constantFrom('/', '/healthz', '/a b', '/é'), fc.webPath().map((p) => `/${p.replace(/^\//, '')}`))),
      host: mostly(fc.domain()),
      headers: fc.array(fc.record({ name: mostly(fc.constantFrom('x-a', 'Host', 'X-Token')), value: mostly(fc.stringMatching(/^[ -~]{0,20}$/)) }), { maxLength: 2 }),
      expectedStatuses: fc.array(mostly(fc.constantFrom('200', '200-299', '299-200', '418')), { maxLength: 2 }),
    }, { requiredKeys: [] }),
    tls: fc.record({ serverName: mostly(fc.domain()), insecureSkipVerify: fc.boolean(), secretName: label }, { requiredKeys: [] }),
  }, { requiredKeys: ['type'] }),
  fc.record({ type: fc.constant('grpc'), grpc: fc.record({ service: mostly(fc.constantFrom('', 'grpc.health.v1.Health')) }) }),
);
const spec = fc.record(
  {
    addresses: fc.oneof({ weight: 10, arbitrary: fc.array(addressOrBoth, { minLength: 1, maxLength: 3 }) }, { weight: 1, arbitrary: fc.constant([]) }),
    ports,
    service,
    healthCheck,
    endpoints: fc.record({ legacyEndpoints: fc.boolean(), maxEndpointsPerSlice: rarely(fc.integer({ min: 1, max: 1000 }), fc.constantFrom(0, 1001)) }, { requiredKeys: [] }),
  },
  { requiredKeys: ['addresses', 'ports'] },
);

interface Backend {
  metadata: { name: string; generation?: number };
  status?: { observedGeneration?: number; state?: string };
}

test('generated ExternalBackends are refused with a message or get a status in time; the operator never stops and keeps serving a neighbour', async (t) => {
  t.timeout(10 * 60_000);
  const banner = `fuzz: seed ${SEED}, ${RUNS} cases (replay with EXTBACKEND_FUZZ_SEED=${SEED})`;
  t.log(banner);
  process.stderr.write(`${banner}\n`);
  const cluster = await startLocalCluster();
  t.teardown(() => cluster.stop());
  await kubectlAt(cluster.kubeconfig, ['apply', '-k', path.join(REPO_ROOT, 'crds')]);
  await kubectlAt(cluster.kubeconfig, ['wait', '--for=condition=Established', '--timeout=60s', 'crd', '--all']);
  const suffix = randomBytes(3).toString('hex');
  const fuzzNs = `fuzz-${suffix}`;
  const neighbourNs = `neighbour-${suffix}`;
  for (const ns of [fuzzNs, neighbourNs]) await kubectlAt(cluster.kubeconfig, ['create', 'namespace', ns]);

  // What the operator logs at error level, and anything unhandled in this process.
  const errors: string[] = [];
  const log = winston.createLogger({ level: 'warn', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: new Writable({ write: (chunk: Buffer, _enc, done) => (/"level":"error"/.test(chunk.toString()) && errors.push(chunk.toString()), done()) }) })] });
  const unhandled: unknown[] = [];
  const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
  process.on('unhandledRejection', onUnhandled);
  t.teardown(() => void process.off('unhandledRejection', onUnhandled));

  const kc = new k8s.KubeConfig();
  kc.loadFromString(cluster.kubeconfigYaml);
  const client = await KubeClient.fromKubeConfig(kc);
  const dns = await startTestDnsServer(1); // answers nothing it was not told: no lookup leaves the machine
  t.teardown(() => dns.close());
  const abort = new AbortController();
  let exited = false;
  const running = await startOperator({
    client,
    ...OPERATOR_DEFAULTS,
    log,
    leaderElect: false,
    leaseNamespace: fuzzNs,
    dnsServers: [dns.address],
    signal: abort.signal,
    // Generated addresses are never contacted: the probe answers by port parity.
    probe: (_ip, probedPort) => Promise.resolve(probedPort % 2 ? { ok: false, outcome: 'error', error: 'fuzz: odd port' } : { ok: true, outcome: 'success' }),
  });
  void running.done.then(() => (exited = true));
  t.teardown(async () => {
    abort.abort();
    await running.done;
    await client.close();
  });

  const xbs = (ns: string, name?: string): string => resourcePath({ group: 'extbackend.io', version: 'v1alpha1', plural: 'externalbackends', namespace: ns, name });
  const slices = (ns: string): string => resourcePath({ group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', namespace: ns });
  await client.create(xbs(neighbourNs), { apiVersion: 'extbackend.io/v1alpha1', kind: 'ExternalBackend', metadata: { name: 'neighbour' }, spec: { addresses: [{ ip: '198.51.100.1' }], ports: [{ port: 80 }] } });

  const cases = fc.sample(spec, { seed: SEED, numRuns: RUNS });
  let accepted = 0;
  let refused = 0;
  const statusTimes: number[] = [];
  const neighbourTimes: number[] = [];
  for (let start = 0; start < cases.length; start += BATCH) {
    const batch = cases.slice(start, start + BATCH);
    const created: { name: string; at: number; spec: unknown }[] = [];
    await Promise.all(
      batch.map(async (s, i) => {
        const name = `case-${start + i}`;
        try {
          await client.create(xbs(fuzzNs), { apiVersion: 'extbackend.io/v1alpha1', kind: 'ExternalBackend', metadata: { name }, spec: s });
          created.push({ name, at: Date.now(), spec: s });
        } catch (err) {
          if (!(err instanceof ApiError) || ![400, 422].includes(err.code) || !err.status.message) throw new Error(`case ${name} failed without a message the user can act on: ${String(err)}; spec ${JSON.stringify(s)}`);
          refused++;
        }
      }),
    );
    accepted += created.length;
    for (const c of created) {
      const xb = await waitFor(`case ${c.name} to get a status for its generation; spec ${JSON.stringify(c.spec)}`, async () => {
        const obj = await client.get<Backend>(xbs(fuzzNs, c.name));
        return obj.status?.observedGeneration === obj.metadata.generation && obj.status?.state ? obj : false;
      }, { timeoutMs: STATUS_BOUND_MS, intervalMs: 100 });
      statusTimes.push(Date.now() - c.at);
      t.truthy(xb.status?.state);
    }
    // The neighbour is still served: an edit to it is published.
    const ipNow = `198.51.100.${(start / BATCH) % 250 + 2}`;
    const editAt = Date.now();
    await client.patch(xbs(neighbourNs, 'neighbour'), { spec: { addresses: [{ ip: ipNow }] } }, 'merge');
    await waitFor(`the neighbour to publish ${ipNow}`, async () => {
      const list = await client.get<{ items: { endpoints?: { addresses: string[] }[] }[] }>(slices(neighbourNs), { labelSelector: 'kubernetes.io/service-name=neighbour' });
      return list.items.some((s) => s.endpoints?.some((e) => e.addresses.includes(ipNow)));
    }, { timeoutMs: 15_000, intervalMs: 100 });
    neighbourTimes.push(Date.now() - editAt);
    t.false(exited, 'the operator is still running');
    await Promise.all(created.map((c) => client.delete(xbs(fuzzNs, c.name))));
  }
  const max = (v: number[]): number => Math.max(0, ...v);
  t.log(`fuzz: ${cases.length} cases, ${refused} refused by the API server with a message, ${accepted} accepted; status within ${max(statusTimes)} ms at worst (bound ${STATUS_BOUND_MS} ms); neighbour edits published within ${max(neighbourTimes)} ms at worst`);
  t.is(refused + accepted, cases.length);
  t.deepEqual(unhandled, [], 'no unhandled rejection');
  t.deepEqual(errors, [], 'nothing logged at error level');
  t.false(exited);
});
