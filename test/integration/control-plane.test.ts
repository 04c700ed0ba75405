// The foundation's contract: a real API server with a real garbage collector and
// namespace controller behind it.
import test from 'ava';
import * as k8s from '@kubernetes/client-node';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { REPO_ROOT, pinnedVersions } from '../../src/devcluster/build.ts';
import { applyYaml, isNotFound, kubeConfig, kubectl, testNamespace, waitFor } from '../helpers/cluster.ts';

const widgetCrd = `
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.foundation.test.extbackend.io
spec:
  group: foundation.test.extbackend.io
  scope: Namespaced
  names: { plural: widgets, singular: widget, kind: Widget }
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: { type: integer }
`;

test('owner deletion garbage-collects its ConfigMap and namespace deletion completes', async (t) => {
  const ns = await testNamespace(t);
  await applyYaml(widgetCrd);
  await kubectl(['wait', '--for=condition=Established', '--timeout=30s', 'crd/widgets.foundation.test.extbackend.io']);

  const objects = k8s.KubernetesObjectApi.makeApiClient(kubeConfig());
  const owner = await objects.create({ apiVersion: 'foundation.test.extbackend.io/v1', kind: 'Widget', metadata: { name: 'owner', namespace: ns }, spec: { size: 3 } } as k8s.KubernetesObject);
  t.truthy(owner.metadata?.uid, 'the API server assigned a uid');

  const core = kubeConfig().makeApiClient(k8s.CoreV1Api);
  await core.createNamespacedConfigMap({
    namespace: ns,
    body: {
      metadata: {
        name: 'owned',
        ownerReferences: [{ apiVersion: 'foundation.test.extbackend.io/v1', kind: 'Widget', name: 'owner', uid: owner.metadata!.uid!, controller: true }],
      },
      data: { hello: 'world' },
    },
  });
  t.is((await core.readNamespacedConfigMap({ name: 'owned', namespace: ns })).data?.hello, 'world');

  await kubectl(['-n', ns, 'delete', 'widget', 'owner', '--wait=true']);
  // The garbage collector rediscovers resources every 30 s, so a CRD made a moment
  // ago may need one such round before its objects' deletions are seen.
  await waitFor('the garbage collector to delete the owned ConfigMap', async () => {
    try {
      await core.readNamespacedConfigMap({ name: 'owned', namespace: ns });
      return false;
    } catch (err) {
      if (isNotFound(err)) return true;
      throw err;
    }
  }, { timeoutMs: 90_000 });
  t.pass();

  await kubectl(['delete', 'namespace', ns, '--wait=false']);
  await waitFor(`namespace ${ns} to be gone`, async () => {
    try {
      await core.readNamespace({ name: ns });
      return false;
    } catch (err) {
      if (isNotFound(err)) return true;
      throw err;
    }
  }, { timeoutMs: 60_000 });
  t.pass();
});

test('kubectl reports the pinned server version and /readyz says ok', async (t) => {
  const readyz = await kubectl(['get', '--raw', '/readyz']);
  t.is(readyz.stdout.trim(), 'ok');
  const version = JSON.parse((await kubectl(['version', '-o', 'json'])).stdout) as { serverVersion: { gitVersion: string }; clientVersion: { gitVersion: string } };
  const pinned = pinnedVersions(readFileSync(path.join(REPO_ROOT, 'controlplane', 'go.mod'), 'utf8'));
  t.is(version.serverVersion.gitVersion, pinned.kubernetes);
  t.is(version.clientVersion.gitVersion, version.serverVersion.gitVersion);
});
