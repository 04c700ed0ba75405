// API errors the operator must not swallow (issue 14): a delete refused by RBAC is
// retried until it succeeds, and the object stays in the cache until it is really gone.
import { readFile } from 'node:fs/promises';
import * as k8s from '@kubernetes/client-node';
import test from 'ava';
import { KubeClient } from '../../src/runtime/kube-client.ts';
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
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: ${ns}-cluster-reads}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: ${ns}-cluster-reads}
subjects: [{kind: ServiceAccount, name: op, namespace: ${ns}}]
`);
  t.teardown(() => kubectl(['delete', 'clusterrole,clusterrolebinding', `${ns}-cluster-reads`, '--ignore-not-found']).then(() => undefined));
  const client = await serviceAccountClient(ns, 'op');
  const op = await startTestOperator(t, ns, { client });
  t.teardown(() => client.close());
  const xb = (legacy: boolean): string => `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: legacy, namespace: ${ns}}
spec:
  addresses: [{ip: 192.0.2.1}]
  ports: [{port: 80}]
  endpoints: {legacyEndpoints: ${legacy}}
`;
  await applyYaml(xb(true));
  await waitFor('the Endpoints object', async () => (await kubectl(['-n', ns, 'get', 'endpoints', 'legacy', '--ignore-not-found', '-o', 'name'])).stdout.trim() !== '');
  await op.settle();
  const before = reconcileErrors(op.running.metrics.render());

  await applyYaml(xb(false));
  await waitFor('the refused delete to fail a reconcile twice (retried with backoff)', () => reconcileErrors(op.running.metrics.render()) >= before + 2);
  t.not((await kubectl(['-n', ns, 'get', 'endpoints', 'legacy', '--ignore-not-found', '-o', 'name'])).stdout.trim(), '', 'still there');

  await kubectl(['-n', ns, 'create', 'role', 'delete-endpoints', '--verb=delete', '--resource=endpoints']);
  await kubectl(['-n', ns, 'create', 'rolebinding', 'delete-endpoints', '--role=delete-endpoints', `--serviceaccount=${ns}:op`]);
  await waitFor('the retried delete to remove the Endpoints object', async () => (await kubectl(['-n', ns, 'get', 'endpoints', 'legacy', '--ignore-not-found', '-o', 'name'])).stdout.trim() === '');
  await op.settle();
  t.pass();
});
