// API errors the operator must not swallow (issue 14): a delete refused by RBAC is
// retried until it succeeds, and the object stays in the cache until it is really gone.
import { readFile } from 'node:fs/promises';
import { Writable } from 'node:stream';
import * as k8s from '@kubernetes/client-node';
import test from 'ava';
import winston from 'winston';
import { KubeClient } from '../../src/runtime/kube-client.ts';
import { LeaderElector } from '../../src/runtime/leader-election.ts';
import { applyYaml, kubectl, testKubeconfig, testNamespace, waitFor } from '../helpers/cluster.ts';
import { startTestOperator } from '../helpers/operator.ts';

/** A client that authenticates as ServiceAccount `sa` of `ns`. */
async function serviceAccountClient(ns: string, sa: string): Promise<KubeClient> {
  const token = (await kubectl(['-n', ns, 'create', 'token', sa, '--duration=1h'])).stdout.trim();
  const admin = new k8s.KubeConfig();
  admin.loadFromString(await readFile(testKubeconfig(), 'utf8'));
  const cluster = admin.getCurrentCluster()!;
  const kc = new k8s.KubeConfig();
  kc.loadFromOptions({ clusters: [cluster], users: [{ name: sa, token }], contexts: [{ name: 'c', cluster: cluster.name, user: sa }], currentContext: 'c' });
  return KubeClient.fromKubeConfig(kc);
}

function reconcileErrors(metrics: string): number {
  return Number(/^extbackend_reconcile_errors_total\{controller="externalbackend"\} (\d+)$/m.exec(metrics)?.[1] ?? 0);
}

test('an Endpoints delete refused with 403 is retried, not counted as done; once allowed, the Endpoints object goes', async (t) => {
  const ns = await testNamespace(t);
  // Everything the operator needs in its namespace, except deleting Endpoints.
  await applyYaml(`
apiVersion: v1
kind: ServiceAccount
metadata: {name: op, namespace: ${ns}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: op, namespace: ${ns}}
rules:
- {apiGroups: [extbackend.io], resources: [externalbackends], verbs: [get, list, watch]}
- {apiGroups: [extbackend.io], resources: [externalbackends/status], verbs: [get, patch, update]}
- {apiGroups: [""], resources: [services], verbs: [get, list, watch, create, update, patch, delete]}
- {apiGroups: [""], resources: [endpoints], verbs: [get, list, watch, create, update, patch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch, create, update, patch, delete]}
- {apiGroups: [""], resources: [events], verbs: [create, patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: op, namespace: ${ns}}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: op}
subjects: [{kind: ServiceAccount, name: op, namespace: ${ns}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: ${ns}-cluster-reads}
rules:
- {apiGroups: [""], resources: [nodes], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [servicecidrs], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [get, list, watch]}
- {apiGroups: [""], resources: [namespaces], verbs: [get, list, watch]}
- {apiGroups: [extbackend.io], resources: [externalbackendpolicies], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ${ns}-cluster-reads}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ${ns}-cluster-reads}
subjects: [{kind: ServiceAccount, name: op, namespace: ${ns}}]
`);
  t.teardown(() => kubectl(['delete', 'clusterrole,clusterrolebinding', `${ns}-cluster-reads`, '--ignore-not-found']).then(() => undefined));
  const client = await serviceAccountClient(ns, 'op');
  t.teardown(() => client.close()); // teardowns run last-first: after the operator stopped
  const op = await startTestOperator(t, ns, { client });
  const xb = (legacy: boolean): string => `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: legacy, namespace: ${ns}}
spec:
  addresses: [{ip: 198.51.100.1}]
  ports: [{port: 80}]
  endpoints: {legacyEndpoints: ${legacy}}
`;
  await applyYaml(xb(true));
  await waitFor('the Endpoints object', async () => (await kubectl(['-n', ns, 'get', 'endpoints', 'legacy', '--ignore-not-found', '-o', 'name'])).stdout.trim() !== '');
  await op.settle();
  const before = reconcileErrors(await op.running.metrics.render());

  await applyYaml(xb(false));
  await waitFor('the refused delete to fail a reconcile twice (retried with backoff)', async () => reconcileErrors(await op.running.metrics.render()) >= before + 2);
  t.not((await kubectl(['-n', ns, 'get', 'endpoints', 'legacy', '--ignore-not-found', '-o', 'name'])).stdout.trim(), '', 'still there');

  await kubectl(['-n', ns, 'create', 'role', 'delete-endpoints', '--verb=delete', '--resource=endpoints']);
  await kubectl(['-n', ns, 'create', 'rolebinding', 'delete-endpoints', '--role=delete-endpoints', `--serviceaccount=${ns}:op`]);
  await waitFor('the retried delete to remove the Endpoints object', async () => (await kubectl(['-n', ns, 'get', 'endpoints', 'legacy', '--ignore-not-found', '-o', 'name'])).stdout.trim() === '');
  await op.settle();
  t.pass();
});

test('a missing Lease namespace is reported once with what to do: apply -k, --leader-election-namespace or --leader-elect=false', async (t) => {
  const lines: string[] = [];
  const log = winston.createLogger({ level: 'warn', format: winston.format.json(), transports: [new winston.transports.Stream({ stream: new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) }) })] });
  const client = await KubeClient.fromEnvironment(testKubeconfig());
  t.teardown(() => client.close());
  const elector = new LeaderElector({ client, namespace: 'no-such-namespace-for-leases', name: 'extbackend-operator', identity: 'x', retryPeriodMs: 100, log });
  const abort = new AbortController();
  const acquiring = elector.acquire(abort.signal);
  await waitFor('the first failed attempt', () => lines.length >= 1);
  await new Promise((r) => setTimeout(r, 1000)); // about ten more attempts, 100 ms apart
  abort.abort();
  await t.throwsAsync(acquiring, { message: /stopped before acquiring/ });
  t.is(lines.length, 1, 'said once, not every retry period');
  const message = (JSON.parse(lines[0]!) as { error: string }).error;
  t.regex(message, /namespace "no-such-namespace-for-leases" does not exist/);
  t.regex(message, /kubectl apply -k/);
  t.regex(message, /--leader-election-namespace=/);
  t.regex(message, /--leader-elect=false/);
});
