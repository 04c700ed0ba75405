// The Kustomize install against the real API server: it applies, its RBAC allows
// exactly what the operator and agent need, and both do their job with their own
// ServiceAccounts' tokens.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { KubeClient, loadKubeConfig } from '../../src/runtime/kube-client.ts';
import { applyYaml, kubectl, testKubeconfig, testNamespace, waitFor } from '../helpers/cluster.ts';
import { createBackendHost } from '../helpers/netns.ts';
import { startTestOperator } from '../helpers/operator.ts';

const NS = 'extbackend-system';

/** Installed once: the tests below share the real install. */
let installed: Promise<void> | undefined;
function install(): Promise<void> {
  installed ??= kubectl(['apply', '-k', REPO_ROOT]).then(() => undefined);
  return installed;
}

/** A kubeconfig that authenticates with a freshly requested ServiceAccount token. */
async function serviceAccountKubeconfig(sa: string, server?: string): Promise<string> {
  const token = (await kubectl(['-n', NS, 'create', 'token', sa, '--duration=1h'])).stdout.trim();
  const admin = await readFile(testKubeconfig(), 'utf8');
  const cluster = /clusters:\n- name: \S+\n {2}cluster:\n {4}server: (\S+)\n {4}certificate-authority-data: (\S+)/.exec(admin)!;
  const yaml = [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: c',
    '  cluster:',
    `    server: ${server ?? cluster[1]}`,
    `    certificate-authority-data: ${cluster[2]}`,
    ...(server ? ['    tls-server-name: localhost'] : []),
    'users:',
    `- name: ${sa}`,
    '  user:',
    `    token: ${token}`,
    'contexts:',
    '- name: c',
    '  context: {cluster: c, user: ' + sa + '}',
    'current-context: c',
    '',
  ].join('\n');
  const file = path.join(path.dirname(testKubeconfig()), `${sa}-${process.pid}.kubeconfig`);
  await writeFile(file, yaml, { mode: 0o600 });
  return file;
}

test.serial('kubectl kustomize is deterministic and apply -k (also --dry-run=server) accepts every object', async (t) => {
  const first = (await kubectl(['kustomize', REPO_ROOT])).stdout;
  const second = (await kubectl(['kustomize', REPO_ROOT])).stdout;
  t.is(first, second);
  for (const kind of ['CustomResourceDefinition', 'Namespace', 'ServiceAccount', 'ClusterRole', 'Role', 'Deployment', 'DaemonSet', 'Service', 'ConfigMap', 'ValidatingAdmissionPolicy', 'ValidatingAdmissionPolicyBinding']) {
    t.regex(first, new RegExp(`^kind: ${kind}$`, 'm'), kind);
  }
  t.regex(first, /image: ghcr\.io\/extbackend\/extbackend:0\.1\.0/);
  // (A server-side dry run of namespaced objects needs their namespace to exist.)
  await install();
  const dry = await kubectl(['apply', '-k', REPO_ROOT, '--dry-run=server']);
  t.regex(dry.stdout, /daemonset\.apps\/extbackend-agent (created|configured|unchanged) \(server dry run\)/);
  t.notRegex(dry.stderr, /error/i);
  t.regex((await kubectl(['-n', NS, 'get', 'deployment,daemonset', '-o', 'name'])).stdout, /deployment\.apps\/extbackend-operator[\s\S]*daemonset\.apps\/extbackend-agent/);
});

test('the local overlay is the install with the locally built image and the monitoring component, and nothing else', async (t) => {
  const shipped = (await kubectl(['kustomize', REPO_ROOT])).stdout.split('\n');
  const documents = (await kubectl(['kustomize', path.join(REPO_ROOT, 'config', 'overlays', 'local')])).stdout.split(/^---\n/m);
  // The monitoring component's objects come on top: alert rules, scrape targets, the dashboard.
  const monitoring = (doc: string): boolean => /^kind: (PrometheusRule|ServiceMonitor|PodMonitor)$/m.test(doc) || (/^kind: ConfigMap$/m.test(doc) && /^  name: extbackend-dashboard$/m.test(doc));
  t.deepEqual(documents.filter(monitoring).map((d) => /^kind: (\S+)$/m.exec(d)![1]).sort(), ['ConfigMap', 'PodMonitor', 'PrometheusRule', 'ServiceMonitor']);
  const local = documents.filter((d) => !monitoring(d)).join('---\n').split('\n');
  // Every image line names the local image, followed by a pull policy of Never; all other lines are the same.
  const withoutPolicy = local.filter((l) => !/^\s+imagePullPolicy: Never$/.test(l));
  t.is(local.length - withoutPolicy.length, shipped.filter((l) => /^\s+image: /.test(l)).length);
  t.is(withoutPolicy.length, shipped.length);
  const differing = shipped.flatMap((line, i) => (line === withoutPolicy[i] ? [] : [[line.trim(), withoutPolicy[i]?.trim()]]));
  t.true(differing.length >= 3, 'the operator, the agent and its init container');
  for (const [ours, theirs] of differing) t.deepEqual([ours, theirs], ['image: ghcr.io/extbackend/extbackend:0.1.0', 'image: localhost/extbackend:dev']);
});

const allowed: [string, string[]][] = [
  ['extbackend-operator', ['list externalbackends.extbackend.io', 'patch externalbackends.extbackend.io/status', 'create services', 'delete services', 'patch endpointslices.discovery.k8s.io', 'delete endpointslices.discovery.k8s.io', 'patch endpoints', 'create events', 'watch nodes', 'list servicecidrs.networking.k8s.io', 'get secrets', 'watch externalbackendpolicies.extbackend.io', 'list namespaces']],
  ['extbackend-agent', ['list services', 'watch endpointslices.discovery.k8s.io', 'get nodes', 'create events']],
];
const denied: [string, string[]][] = [
  ['extbackend-operator', ['list secrets', 'delete pods', 'create pods', 'patch nodes', 'update externalbackends.extbackend.io', 'create clusterrolebindings.rbac.authorization.k8s.io', 'update externalbackendpolicies.extbackend.io', 'patch namespaces']],
  ['extbackend-agent', ['create services', 'patch endpointslices.discovery.k8s.io', 'get secrets', 'list secrets', 'delete pods', 'patch nodes']],
];

test.serial('RBAC: every verb the operator and agent need, and not more', async (t) => {
  await install();
  const can = async (sa: string, what: string, ns = 'default'): Promise<boolean> => {
    const [verb, target] = what.split(' ') as [string, string];
    const [resource, subresource] = target.split('/') as [string, string?];
    const r = await kubectl(['auth', 'can-i', verb, resource, ...(subresource ? [`--subresource=${subresource}`] : []), '-n', ns, `--as=system:serviceaccount:${NS}:${sa}`]).catch((e: Error) => ({ stdout: e.message }));
    return /^yes/m.test(r.stdout);
  };
  for (const [sa, list] of allowed) for (const what of list) t.true(await can(sa, what), `${sa} may ${what}`);
  for (const [sa, list] of denied) for (const what of list) t.false(await can(sa, what), `${sa} may not ${what}`);
  t.true(await can('extbackend-operator', 'update leases.coordination.k8s.io', NS), 'the Lease in its own namespace');
  t.false(await can('extbackend-operator', 'update leases.coordination.k8s.io', 'kube-system'), 'no Lease anywhere else');
  t.false(await can('extbackend-operator', 'list secrets', NS));
});

test.serial('the operator does its whole job with its ServiceAccount token (leader election included)', async (t) => {
  await install();
  const ns = await testNamespace(t);
  const client = await KubeClient.fromKubeConfig(loadKubeConfig(await serviceAccountKubeconfig('extbackend-operator')));
  t.teardown(() => client.close());
  // The test helper's client is replaced by one with the ServiceAccount's credentials.
  const op = await startTestOperator(t, ns, { client, leaderElect: true, leaseNamespace: NS, leaseName: `extbackend-operator-${ns}`, identity: 'sa-test' });
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: web, namespace: ${ns}}
spec:
  addresses: [{ip: 198.51.100.20}, {ip: 198.51.100.21}]
  ports: [{name: http, port: 80}]
`);
  const state = await waitFor('the backend to be Ready', async () => (await kubectl(['-n', ns, 'get', 'xb', 'web', '-o', 'jsonpath={.status.state}'])).stdout === 'Ready');
  t.true(state);
  t.regex((await kubectl(['-n', ns, 'get', 'endpointslices,endpoints,services', '-l', 'extbackend.io/backend=web', '-o', 'name'])).stdout, /endpointslice[\s\S]*endpoints\/web[\s\S]*service\/web/);
  t.truthy(op.running);
});

test.serial('the agent does its job with its ServiceAccount token', async (t) => {
  await install();
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: web, namespace: ${ns}}
spec: {addresses: [{ip: 198.51.100.30}], ports: [{name: http, port: 80}]}
`);
  const vip = await waitFor('a cluster IP', async () => (await kubectl(['-n', ns, 'get', 'svc', 'web', '-o', 'jsonpath={.spec.clusterIP}'])).stdout.trim() || false);
  // The agent runs in a network namespace of its own, reaching the API server over a veth.
  const host = await createBackendHost(t);
  const port = /server: https:\/\/127\.0\.0\.1:(\d+)/.exec(await readFile(testKubeconfig(), 'utf8'))![1];
  const kubeconfig = await serviceAccountKubeconfig('extbackend-agent', `https://${host.hostIP}:${port}`);
  const agent = host.spawn(process.execPath, ['--disable-warning=ExperimentalWarning', path.join(REPO_ROOT, 'bin', 'extbackend.js'), 'agent', '--kubeconfig', kubeconfig, '--node-name', `sa-node-${ns}`, '--http-address', `${host.ip}:10266`]);
  let log = '';
  agent.stderr?.on('data', (d: Buffer) => (log += d.toString()));
  const programmed = await waitFor('the agent to program the Service', async () => {
    const saved = await host.exec('iptables-save', ['-t', 'nat']);
    return saved.includes(`-d ${vip}/32`) ? saved : false;
  }).catch((err: Error) => {
    throw new Error(`${err.message}\nagent log:\n${log}`);
  });
  t.regex(programmed, /-j DNAT --to-destination 198\.51\.100\.30:80/);
  t.notRegex(log, /forbidden/i, 'no request was refused');
});
