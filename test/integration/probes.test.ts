// Health probes against real servers in network namespaces, with the real control plane.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { createCa, issueCertificate } from '../../src/devcluster/pki.ts';
import { resourcePath, type KubeClient } from '../../src/runtime/kube-client.ts';
import { applyYaml, kubectl, testNamespace, waitFor } from '../helpers/cluster.ts';
import { backendServer, runInHost, type RunningServer } from '../helpers/backends.ts';
import { assertRouteVia, createBackendHost, type BackendHost } from '../helpers/netns.ts';
import { startTestOperator, type TestOperator } from '../helpers/operator.ts';

const PERIOD = 1;
const TIMEOUT = 1;
const FAILURES = 2;
/** The bound the issue sets: failureThreshold x period + timeout + 1 s. */
const BOUND_MS = (FAILURES * PERIOD + TIMEOUT + 1) * 1000;

type Slice = { endpoints?: { addresses: string[]; conditions: { ready: boolean; serving: boolean } }[] };

/** Whether ip is published ready in the backend's slices (polled directly: kubectl is too slow to time this). */
async function publishedReady(client: KubeClient, ns: string, name: string, ip: string): Promise<boolean | undefined> {
  const slices = await client.list<Slice>(resourcePath({ group: 'discovery.k8s.io', version: 'v1', plural: 'endpointslices', namespace: ns }), { labelSelector: `kubernetes.io/service-name=${name}` });
  for (const s of slices.items) for (const e of s.endpoints ?? []) if (e.addresses.includes(ip)) return e.conditions.ready;
  return undefined;
}

async function timeUntil(op: TestOperator, ns: string, name: string, ip: string, ready: boolean): Promise<number> {
  const start = Date.now();
  await waitFor(`${ip} to be published ${ready ? 'ready' : 'not ready'}`, async () => (await publishedReady(op.client, ns, name, ip)) === ready, { timeoutMs: 30_000, intervalMs: 50 });
  return Date.now() - start;
}

function backendYaml(ns: string, name: string, host: BackendHost, port: number, healthCheck: string): string {
  return `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: ${name}, namespace: ${ns}}
spec:
  addresses: [{ip: ${host.ip}}]
  ports: [{name: main, port: ${port}}]
  healthCheck: ${healthCheck}
`;
}

async function statusMessage(ns: string, name: string): Promise<string> {
  const xb = JSON.parse((await kubectl(['-n', ns, 'get', 'externalbackend', name, '-o', 'json'])).stdout) as { status?: { addresses?: { message?: string }[] } };
  return xb.status?.addresses?.[0]?.message ?? '';
}

/** Stops and restarts the server; asserts both transitions land within the bound. */
async function assertFollowsServer(t: ExecutionContext, op: TestOperator, ns: string, name: string, host: BackendHost, server: RunningServer, failure: RegExp): Promise<void> {
  await timeUntil(op, ns, name, host.ip, true); // ready to begin with
  await server.stop();
  const down = await timeUntil(op, ns, name, host.ip, false);
  t.true(down <= BOUND_MS, `not ready ${down} ms after the server stopped (bound ${BOUND_MS} ms)`);
  t.regex(await waitFor('the status to say why', async () => (failure.test(await statusMessage(ns, name)) ? statusMessage(ns, name) : false)), failure);
  await server.start();
  const up = await timeUntil(op, ns, name, host.ip, true);
  t.true(up <= BOUND_MS, `ready ${up} ms after the server restarted (bound ${BOUND_MS} ms)`);
  t.log(`${name}: not ready after ${down} ms, ready again after ${up} ms (bound ${BOUND_MS} ms)`);
}

const probe = (type: string, extra = '') => `{type: ${type}, periodSeconds: ${PERIOD}, timeoutSeconds: ${TIMEOUT}, failureThreshold: ${FAILURES}${extra}}`;

test('tcp: a stopped host leaves rotation and comes back within the bound', async (t) => {
  const ns = await testNamespace(t);
  const host = await createBackendHost(t);
  const server = await backendServer(host, 'tcp', 7000);
  const op = await startTestOperator(t, ns);
  await applyYaml(backendYaml(ns, 'tcp', host, 7000, probe('tcp')));
  await assertFollowsServer(t, op, ns, 'tcp', host, server, /connection refused/);
});

test('http: a stopped host leaves rotation and comes back within the bound', async (t) => {
  const ns = await testNamespace(t);
  const host = await createBackendHost(t);
  const server = await backendServer(host, 'http', 8080);
  const op = await startTestOperator(t, ns);
  await applyYaml(backendYaml(ns, 'web', host, 8080, probe('http', ', http: {path: /healthz}')));
  await assertFollowsServer(t, op, ns, 'web', host, server, /connection refused/);
});

test('grpc: grpc.health.v1 against a real grpc-js server', async (t) => {
  const ns = await testNamespace(t);
  const host = await createBackendHost(t);
  const server = await backendServer(host, 'grpc', 9090);
  const op = await startTestOperator(t, ns);
  await applyYaml(backendYaml(ns, 'rpc', host, 9090, probe('grpc', `, grpc: {service: ${host.name}}`)));
  await assertFollowsServer(t, op, ns, 'rpc', host, server, /connection refused/);
  // A service the server does not know is not healthy.
  await applyYaml(backendYaml(ns, 'rpc', host, 9090, probe('grpc', ', grpc: {service: no.such.Service}')));
  await waitFor('an unknown gRPC service to be not ready', async () => (await publishedReady(op.client, ns, 'rpc', host.ip)) === false);
  t.regex(await statusMessage(ns, 'rpc'), /gRPC status 5|SERVICE_UNKNOWN|NOT_FOUND/i);
});

async function tlsDir(t: ExecutionContext, serverIP: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'xb-tls-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await createCa(dir, 'probe-test-ca');
  await issueCertificate(dir, 'server', '/CN=backend', { serverSANs: [serverIP] });
  await issueCertificate(dir, 'client', '/CN=extbackend-probe', 'client');
  return dir;
}

async function createSecret(ns: string, name: string, files: Record<string, string>): Promise<void> {
  await kubectl(['-n', ns, 'create', 'secret', 'generic', name, ...Object.entries(files).map(([k, f]) => `--from-file=${k}=${f}`)]);
}

test('https with a custom CA from a Secret', async (t) => {
  const ns = await testNamespace(t);
  const host = await createBackendHost(t);
  const dir = await tlsDir(t, host.ip);
  const server = await backendServer(host, 'https', 8443, ['--cert', path.join(dir, 'server.crt'), '--key', path.join(dir, 'server.key')]);
  await createSecret(ns, 'probe-ca', { 'ca.crt': path.join(dir, 'ca.crt') });
  const op = await startTestOperator(t, ns);
  // Without the CA the certificate is not trusted.
  await applyYaml(backendYaml(ns, 'secure', host, 8443, probe('https')));
  await waitFor('an untrusted certificate to keep it not ready', async () => /not signed by a trusted CA/.test(await statusMessage(ns, 'secure')));
  t.is(await publishedReady(op.client, ns, 'secure', host.ip), false);
  await applyYaml(backendYaml(ns, 'secure', host, 8443, probe('https', ', tls: {secretName: probe-ca}')));
  await assertFollowsServer(t, op, ns, 'secure', host, server, /connection refused/);
});

test('a real etcd with client-certificate TLS', async (t) => {
  const ns = await testNamespace(t);
  const host = await createBackendHost(t);
  const dir = await tlsDir(t, host.ip);
  const etcdBin = path.join(process.env.EXTBACKEND_CONTROLPLANE_BIN ?? '', 'etcd');
  const data = await mkdtemp(path.join(os.tmpdir(), 'xb-etcd-'));
  t.teardown(() => rm(data, { recursive: true, force: true }));
  const url = `https://${host.ip}:2379`;
  const etcd = await runInHost(host, 'etcd', etcdBin, [
    `--data-dir=${data}`,
    `--listen-client-urls=${url}`,
    `--advertise-client-urls=${url}`,
    '--listen-peer-urls=http://127.0.0.1:2380',
    '--initial-advertise-peer-urls=http://127.0.0.1:2380',
    '--initial-cluster=default=http://127.0.0.1:2380',
    `--cert-file=${path.join(dir, 'server.crt')}`,
    `--key-file=${path.join(dir, 'server.key')}`,
    `--trusted-ca-file=${path.join(dir, 'ca.crt')}`,
    '--client-cert-auth',
  ]);
  await createSecret(ns, 'etcd-ca-only', { 'ca.crt': path.join(dir, 'ca.crt') });
  await createSecret(ns, 'etcd-client', { 'ca.crt': path.join(dir, 'ca.crt'), 'tls.crt': path.join(dir, 'client.crt'), 'tls.key': path.join(dir, 'client.key') });
  const op = await startTestOperator(t, ns);
  // Trusting the server is not enough: etcd wants a client certificate.
  await applyYaml(backendYaml(ns, 'etcd', host, 2379, probe('https', ', http: {path: /health}, tls: {secretName: etcd-ca-only}')));
  await waitFor('etcd to refuse a probe without a client certificate', async () => /certificate|ECONNRESET|connection reset|alert/i.test(await statusMessage(ns, 'etcd')));
  await applyYaml(backendYaml(ns, 'etcd', host, 2379, probe('https', ', http: {path: /health}, tls: {secretName: etcd-client}')));
  await assertFollowsServer(t, op, ns, 'etcd', host, etcd, /connection refused/);
});

test('a host alternating pass/fail inside its thresholds never changes state and causes no slice writes', async (t) => {
  const ns = await testNamespace(t);
  const host = await createBackendHost(t);
  const server = await backendServer(host, 'http', 8080);
  const op = await startTestOperator(t, ns);
  await applyYaml(backendYaml(ns, 'flaky', host, 8080, `{type: http, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 3, successThreshold: 2}`));
  await waitFor('ready', async () => (await publishedReady(op.client, ns, 'flaky', host.ip)) === true);
  await op.settle();
  const failuresBefore = await probeFailures(op);
  const writesBefore = op.writes.filter((w) => w.includes('endpointslices')).length;
  server.signal('SIGUSR1'); // now 500, 200, 500, 200, ...
  await new Promise((r) => setTimeout(r, 8_000));
  t.true((await probeFailures(op)) - failuresBefore >= 3, 'the failing probes did happen');
  t.is(await publishedReady(op.client, ns, 'flaky', host.ip), true, 'still ready');
  t.is(op.writes.filter((w) => w.includes('endpointslices')).length, writesBefore, 'no slice writes');
});

async function probeFailures(op: TestOperator): Promise<number> {
  const m = /^extbackend_probe_results_total\{[^}]*type="http",outcome="failure"\} (\d+)$/m.exec(await op.running.metrics.render());
  return Number(m?.[1] ?? 0);
}

test('backend routes go through the test veth, never the default route', async (t) => {
  const host = await createBackendHost(t);
  await assertRouteVia(host.ip, host.hostIf);
  await t.throwsAsync(assertRouteVia('192.0.2.200', host.hostIf), { message: /refusing to send traffic/ });
});
