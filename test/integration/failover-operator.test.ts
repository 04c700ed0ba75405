// Failover and drain through the real API server: the schema's checks, what the
// operator publishes for standby and drained hosts, and what kubectl get shows.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { applyYaml, kubectl, testNamespace, waitFor } from '../helpers/cluster.ts';
import { startTestOperator } from '../helpers/operator.ts';
import type { ExternalBackendStatus } from '../../src/api/external-backend.ts';

const invalid: [string, string, RegExp][] = [
  ['priority above 1000', 'addresses: [{ip: 198.51.100.1, priority: 1001}]', /priority must be 0 \(most preferred\) to 1000/],
  ['negative priority', 'addresses: [{ip: 198.51.100.1, priority: -1}]', /priority must be 0 \(most preferred\) to 1000/],
  ['minReady 0', 'addresses: [{ip: 198.51.100.1}]\n  failover: {minReady: 0}', /minReady.*greater than or equal to 1/],
  ['negative failback delay', 'addresses: [{ip: 198.51.100.1}]\n  failover: {failbackDelaySeconds: -5}', /failbackDelaySeconds.*greater than or equal to 0/],
  ['drain not a boolean', 'addresses: [{ip: 198.51.100.1, drain: "yes"}]', /drain.*boolean/],
];

test('the CRD rejects a priority outside 0..1000 and bad failover settings, saying why', async (t) => {
  const ns = await testNamespace(t);
  for (const [what, spec, message] of invalid) {
    const yaml = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: bad, namespace: ${ns}}\nspec:\n  ${spec}\n  ports: [{port: 80}]\n`;
    const err = await t.throwsAsync(kubectl(['apply', '--dry-run=server', '-f', '-'], yaml), undefined, what);
    t.regex(err?.message ?? '', message, what);
  }
  const edges = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: edges, namespace: ${ns}}\nspec:\n  addresses: [{ip: 198.51.100.1, priority: 0}, {ip: 198.51.100.2, priority: 1000, drain: true}]\n  ports: [{port: 80}]\n`;
  await t.notThrowsAsync(kubectl(['apply', '--dry-run=server', '-f', '-'], edges), '0 and 1000 are fine, and so is a drained host');
});

type Slice = { endpoints: { addresses: string[]; conditions: Record<string, boolean> }[] };

test('sample mysql-primary-backup.yaml: the backup stands by, a drained primary is terminating, kubectl get shows the active group', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  const yaml = readFileSync(path.join(REPO_ROOT, 'samples', 'mysql-primary-backup.yaml'), 'utf8').replace(/namespace: .*/g, `namespace: ${ns}`);
  await applyYaml(yaml);
  const conditions = async (): Promise<Record<string, Record<string, boolean>>> => {
    const { stdout } = await kubectl(['-n', ns, 'get', 'endpointslices', '-l', 'kubernetes.io/service-name=mysql', '-o', 'json']);
    return Object.fromEntries((JSON.parse(stdout) as { items: Slice[] }).items.flatMap((s) => s.endpoints.map((e) => [e.addresses[0]!, e.conditions])));
  };
  const published = await waitFor('the slices to list all three hosts', async () => {
    const c = await conditions();
    return Object.keys(c).length === 3 ? c : false;
  });
  t.deepEqual(published, {
    '172.16.240.10': { ready: true, serving: true, terminating: false },
    '172.16.240.11': { ready: true, serving: true, terminating: false },
    '172.16.241.10': { ready: false, serving: true, terminating: false },
  });
  const table = await waitFor('kubectl get to show the active group', async () => {
    const { stdout } = await kubectl(['-n', ns, 'get', 'externalbackends', '-o', 'wide']);
    return /mysql\s+2\/3\s+\S+\s+\S+\s+Ready\s+0\s+False/.test(stdout) ? stdout : false;
  });
  t.regex(table, /READY.*STATUS\s+ACTIVE\s+FAILED-OVER/);

  await applyYaml(yaml.replace('drain: false', 'drain: true'));
  const drained = await waitFor('the drained primary to be terminating', async () => {
    const c = await conditions();
    return c['172.16.240.11']?.terminating ? c : false;
  });
  t.deepEqual(drained['172.16.240.11'], { ready: false, serving: true, terminating: true });
  t.deepEqual(drained['172.16.240.10'], { ready: true, serving: true, terminating: false }, 'the other primary still serves');
  const status = await waitFor('the status to show the drain', async () => {
    const { stdout } = await kubectl(['-n', ns, 'get', 'externalbackend', 'mysql', '-o', 'json']);
    const s = (JSON.parse(stdout) as { status?: ExternalBackendStatus }).status;
    return s?.ready === '1/3' ? s : false;
  });
  t.deepEqual(status.addresses?.map((a) => [a.address, a.priority, a.role]), [['172.16.240.10', 0, 'active'], ['172.16.240.11', 0, 'draining'], ['172.16.241.10', 1, 'standby']]);
  t.deepEqual(status.activeGroups?.map((g) => [g.port, g.priority, g.readyHosts]), [['mysql', 0, 1]]);
  t.is(status.conditions?.find((c) => c.type === 'Draining')?.reason, 'Drained');
  t.is(status.conditions?.find((c) => c.type === 'FailedOver')?.status, 'False');
});
