// ExternalBackendPolicy against the real API server: the shipped ValidatingAdmissionPolicy
// rejects what the spec shows, the operator refuses what admission cannot see (DNS
// answers, policies changed later, --require-policy), and the shipped roles keep
// policies an admin's business. Policies are cluster-scoped: each test selects its own
// namespaces by a label value of its own, so tests running side by side do not meet.
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { applyYaml, kubectl, testNamespace, waitFor } from '../helpers/cluster.ts';
import { startTestDnsServer } from '../helpers/dns-server.ts';
import { startTestOperator } from '../helpers/operator.ts';

const TEAM_LABEL = 'extbackend.io/team';

interface AddressStatus {
  address: string;
  ips?: string[];
  ready: boolean;
  reason?: string;
  message?: string;
}
interface Backend {
  status?: { state?: string; addresses?: AddressStatus[]; conditions?: { type: string; status: string; reason: string; message: string }[] };
}

function repoFile(...parts: string[]): string {
  return readFileSync(path.join(REPO_ROOT, ...parts), 'utf8');
}

let admissionInstalled: Promise<unknown> | undefined;
/** The shipped ValidatingAdmissionPolicy and binding, once per run (they are cluster-wide). */
function installAdmissionPolicy(): Promise<unknown> {
  admissionInstalled ??= applyYaml(repoFile('config', 'base', 'admission-policy.yaml'));
  return admissionInstalled;
}

/** A namespace labelled for a team of this test's own, and that team's label value. */
async function teamNamespace(t: Parameters<typeof testNamespace>[0], prefix: string): Promise<{ ns: string; team: string }> {
  const ns = await testNamespace(t, prefix);
  const team = `${prefix}-${randomBytes(3).toString('hex')}`;
  await kubectl(['label', 'namespace', ns, `${TEAM_LABEL}=${team}`]);
  return { ns, team };
}

/** Applies a policy (deleted when the test ends). */
async function applyPolicy(t: Parameters<typeof testNamespace>[0], name: string, team: string, spec: string): Promise<void> {
  await applyYaml(`
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackendPolicy
metadata: {name: ${name}}
spec:
  namespaceSelector: {matchLabels: {${TEAM_LABEL}: ${team}}}
${spec.replace(/^/gm, '  ')}
`);
  t.teardown(async () => {
    await kubectl(['delete', 'externalbackendpolicy', name, '--ignore-not-found', '--wait=false']).catch(() => undefined);
  });
}

function backendYaml(ns: string, name: string, addresses: string, ports = '[{port: 5432}]', extra = ''): string {
  return `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: ${name}, namespace: ${ns}}
spec:
  addresses: ${addresses}
  ports: ${ports}
${extra}`;
}

/**
 * The API server's error for a `kubectl apply` that must fail. The admission plugin
 * sees a new policy or param through its informers, so a server-side dry run is
 * repeated until it is refused; then the real apply must fail the same way.
 */
async function rejection(yaml: string): Promise<string> {
  await waitFor('the admission policy to refuse the object', async () => {
    try {
      await kubectl(['apply', '--dry-run=server', '-f', '-'], yaml);
      return false;
    } catch (err) {
      return (err as Error).message;
    }
  });
  const error = await applyYaml(yaml).then(
    () => undefined,
    (err: Error) => err.message,
  );
  if (error === undefined) throw new Error('kubectl apply succeeded where the admission policy should refuse');
  return error;
}

async function getBackend(ns: string, name: string): Promise<Backend | undefined> {
  const { stdout } = await kubectl(['-n', ns, 'get', 'externalbackend', name, '-o', 'json', '--ignore-not-found']);
  return stdout.trim() ? (JSON.parse(stdout) as Backend) : undefined;
}

/** Every IP in the backend's EndpointSlices, sorted. */
async function published(ns: string, name: string): Promise<string> {
  const { stdout } = await kubectl(['-n', ns, 'get', 'endpointslices', '-l', `kubernetes.io/service-name=${name}`, '-o', 'json']);
  const slices = (JSON.parse(stdout) as { items: { endpoints?: { addresses: string[] }[] }[] }).items;
  return slices.flatMap((s) => (s.endpoints ?? []).flatMap((e) => e.addresses)).sort().join(',');
}

async function waitForPublished(ns: string, name: string, expected: string): Promise<void> {
  await waitFor(`${ns}/${name} to publish exactly [${expected}]`, async () => {
    const now = await published(ns, name);
    return now === expected ? true : `published [${now}]`;
  });
}

async function waitForAddress(ns: string, name: string, address: string, check: (a: AddressStatus) => boolean): Promise<AddressStatus> {
  return waitFor(`the status of ${address} in ${ns}/${name}`, async () => {
    const a = (await getBackend(ns, name))?.status?.addresses?.find((x) => x.address === address);
    return a && check(a) ? a : false;
  });
}

async function policyEvents(ns: string): Promise<string[]> {
  const { stdout } = await kubectl(['-n', ns, 'get', 'events', '--field-selector', 'reason=RefusedByPolicy', '-o', 'jsonpath={range .items[*]}{.message}{"\\n"}{end}']);
  return stdout.split('\n').filter(Boolean);
}

test('the shipped admission policy type-checks against the CRDs (no warnings)', async (t) => {
  await installAdmissionPolicy();
  const status = await waitFor('the admission policy to be type-checked', async () => {
    const { stdout } = await kubectl(['get', 'validatingadmissionpolicy', 'extbackend-policy', '-o', 'json']);
    const vap = JSON.parse(stdout) as { metadata: { generation: number }; status?: { observedGeneration?: number; typeChecking?: { expressionWarnings?: { fieldRef: string; warning: string }[] } } };
    return vap.status?.observedGeneration === vap.metadata.generation ? vap.status : false;
  });
  t.deepEqual(status.typeChecking?.expressionWarnings ?? [], []);
});

test('admission: two teams, each held to its own policy; the refusal names the policy and the address', async (t) => {
  await installAdmissionPolicy();
  const a = await teamNamespace(t, 'team-a');
  const b = await teamNamespace(t, 'team-b');
  // The sample policy, for a team label of this test's own.
  const policyA = `team-a-${a.team}`;
  await applyYaml(repoFile('samples', 'policy-team-a.yaml').replace('name: team-a', `name: ${policyA}`).replace(`${TEAM_LABEL}: a}`, `${TEAM_LABEL}: ${a.team}}`));
  t.teardown(async () => {
    await kubectl(['delete', 'externalbackendpolicy', policyA, '--ignore-not-found', '--wait=false']).catch(() => undefined);
  });
  const policyB = `team-b-${b.team}`;
  await applyPolicy(t, policyB, b.team, 'allowedCIDRs: [203.0.113.0/24]');

  const outside = await rejection(backendYaml(a.ns, 'outside', '[{ip: 203.0.113.5}]'));
  t.regex(outside, new RegExp(`ExternalBackendPolicy ${policyA} does not allow address 203\\.0\\.113\\.5 \\(allowedCIDRs: 10\\.20\\.0\\.0/16, 2001:db8:20::/48\\)`));
  const denied = await rejection(backendYaml(a.ns, 'payments', '[{ip: 10.20.1.1}, {ip: 10.20.99.7}]'));
  t.regex(denied, new RegExp(`ExternalBackendPolicy ${policyA} denies address 10\\.20\\.99\\.7 \\(inside deniedCIDRs 10\\.20\\.99\\.0/24\\)`));
  const port = await rejection(backendYaml(a.ns, 'ssh', '[{ip: 10.20.1.1}]', '[{port: 22}]'));
  t.regex(port, new RegExp(`ExternalBackendPolicy ${policyA} does not allow port 22 \\(allowedPorts: 5432, 9187\\)`));
  const overridden = await rejection(backendYaml(a.ns, 'override', '[{ip: 10.20.1.1, targetPorts: {pg: 6432}}]', '[{name: pg, port: 5432}]'));
  t.regex(overridden, new RegExp(`ExternalBackendPolicy ${policyA} does not allow the targetPorts of address 10\\.20\\.1\\.1`));
  const nodePort = await rejection(backendYaml(a.ns, 'np', '[{ip: 10.20.1.1}]', '[{port: 5432}]', '  service: {type: NodePort}'));
  t.regex(nodePort, new RegExp(`ExternalBackendPolicy ${policyA} does not allow Services of type NodePort \\(allowedServiceTypes: ClusterIP, Headless\\)`));
  const http = await rejection(backendYaml(a.ns, 'web', '[{ip: 10.20.1.1}]', '[{port: 5432}]', '  healthCheck: {type: http}'));
  t.regex(http, new RegExp(`ExternalBackendPolicy ${policyA} does not allow http health checks`));
  const name = await rejection(backendYaml(a.ns, 'name', '[{hostname: db.internal}]'));
  t.regex(name, new RegExp(`ExternalBackendPolicy ${policyA} does not allow hostname db\\.internal \\(allowedHostnames: \\*\\.db\\.internal\\)`));
  const inB = await rejection(backendYaml(b.ns, 'team-a-address', '[{ip: 10.20.1.1}]'));
  t.regex(inB, new RegExp(`ExternalBackendPolicy ${policyB} does not allow address 10\\.20\\.1\\.1`));

  // What each policy allows goes through, the other team's addresses included nowhere.
  await applyYaml(backendYaml(a.ns, 'pg', '[{ip: 10.20.1.1}, {ip: "2001:db8:20::1"}, {hostname: primary.db.internal.}]', '[{port: 5432}]', '  healthCheck: {type: tcp}\n  service: {type: Headless}'));
  await applyYaml(backendYaml(b.ns, 'pg', '[{ip: 203.0.113.5}]', '[{port: 80}]', '  service: {type: NodePort}'));
  t.truthy(await getBackend(a.ns, 'pg'));
  t.truthy(await getBackend(b.ns, 'pg'));

  // An update is held to the policy too.
  const update = await rejection(backendYaml(a.ns, 'pg', '[{ip: 10.20.1.1}, {ip: 10.21.0.1}]'));
  t.regex(update, new RegExp(`ExternalBackendPolicy ${policyA} does not allow address 10\\.21\\.0\\.1`));

  const table = (await kubectl(['get', 'externalbackendpolicies', policyA])).stdout;
  t.regex(table, /NAME\s+NAMESPACES\s+ALLOWED-CIDRS\s+DENIED-CIDRS\s+HOSTNAMES\s+PORTS\s+AGE/);
  t.regex(table, new RegExp(`${policyA}\\s+.*${a.team}.*10\\.20\\.0\\.0/16.*10\\.20\\.99\\.0/24.*\\*\\.db\\.internal.*5432`));
});

test('the policy itself is validated: CIDRs, host bits, hostnames, port ranges, selectors', async (t) => {
  const bad: [string, RegExp][] = [
    ['allowedCIDRs: [10.20.0.0/33]', /must be a CIDR/],
    ['allowedCIDRs: [10.20.1.0/16]', /no bits set after the prefix/],
    ['deniedCIDRs: ["2001:db8::1/32"]', /no bits set after the prefix/],
    ['allowedCIDRs: [10.0.0.0/8]\ndeniedCIDRs: [10.0.0.0/8]', /both allowed and denied/],
    ['allowedHostnames: ["db.*.internal"]', /lower-case DNS name/],
    ['allowedHostnames: [DB.internal]', /lower-case DNS name/],
    ['allowedPorts: [{port: 9000, endPort: 8000}]', /endPort must not be below port/],
    ['allowedServiceTypes: [ExternalName]', /Unsupported value/],
  ];
  for (const [spec, message] of bad) {
    // A selector no namespace matches: were a bad policy accepted, it would restrict nobody else's tests.
    const yaml = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackendPolicy\nmetadata: {name: bad-${randomBytes(3).toString('hex')}}\nspec:\n  namespaceSelector: {matchLabels: {${TEAM_LABEL}: nobody}}\n${spec.replace(/^/gm, '  ')}\n`;
    const error = await applyYaml(yaml).then(
      () => 'accepted',
      (err: Error) => err.message,
    );
    t.regex(error, message, spec);
  }
  const selector = await applyYaml(`apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackendPolicy\nmetadata: {name: bad-selector}\nspec:\n  namespaceSelector: {matchExpressions: [{key: team, operator: In}]}\n`).then(
    () => 'accepted',
    (err: Error) => err.message,
  );
  t.regex(selector, /In and NotIn need values/);
  const explain = (await kubectl(['explain', 'externalbackendpolicy.spec.allowedHostnames'])).stdout;
  t.regex(explain, /\*\.suffix/);
});

test('run time: a hostname whose answers move outside the allowed CIDRs is un-published, with the policy in the status and an Event', async (t) => {
  const { ns, team } = await teamNamespace(t, 'dns');
  const policy = `dns-${team}`;
  await applyPolicy(t, policy, team, 'allowedCIDRs: [198.51.100.0/24]\nallowedHostnames: ["*.example.test"]');
  const dns = await startTestDnsServer(1);
  t.teardown(() => dns.close());
  dns.records.set('db.example.test', ['198.51.100.50']);
  await startTestOperator(t, ns, { dnsServers: [dns.address], dnsRefreshMs: 1000 });
  await applyYaml(backendYaml(ns, 'db', '[{hostname: db.example.test}, {ip: 198.51.100.9}]'));
  await waitForPublished(ns, 'db', '198.51.100.50,198.51.100.9');

  // Half the answers leave the allowed range: the rest stays published.
  dns.records.set('db.example.test', ['198.51.100.51', '192.0.2.7']);
  await waitForPublished(ns, 'db', '198.51.100.51,198.51.100.9');
  const partly = await waitForAddress(ns, 'db', 'db.example.test', (a) => !!a.message?.includes('192.0.2.7'));
  t.true(partly.ready);
  t.is(partly.message, `refused: ExternalBackendPolicy ${policy} does not allow address 192.0.2.7 (allowedCIDRs: 198.51.100.0/24)`);

  dns.records.set('db.example.test', ['192.0.2.8']);
  await waitForPublished(ns, 'db', '198.51.100.9');
  const refused = await waitForAddress(ns, 'db', 'db.example.test', (a) => a.reason === 'RefusedByPolicy');
  t.false(refused.ready);
  t.is(refused.message, `every address db.example.test resolves to was refused: ExternalBackendPolicy ${policy} does not allow address 192.0.2.8 (allowedCIDRs: 198.51.100.0/24)`);
  const events = await waitFor('a RefusedByPolicy Event', async () => {
    const all = await policyEvents(ns);
    return all.some((m) => m.includes('192.0.2.8')) ? all : false;
  });
  t.true(events.some((m) => m.startsWith(`db.example.test: ExternalBackendPolicy ${policy}`)));
});

test('run time: tightening a policy un-publishes an accepted address and loosening publishes it again; a forbidden Service type removes the Service', async (t) => {
  const { ns, team } = await teamNamespace(t, 'tighten');
  const policy = `tighten-${team}`;
  await applyPolicy(t, policy, team, 'allowedCIDRs: [198.51.100.0/24]');
  await startTestOperator(t, ns);
  await applyYaml(backendYaml(ns, 'db', '[{ip: 198.51.100.10}, {ip: 198.51.100.20}]'));
  await waitForPublished(ns, 'db', '198.51.100.10,198.51.100.20');

  await applyPolicy(t, policy, team, 'allowedCIDRs: [198.51.100.0/24]\ndeniedCIDRs: [198.51.100.20/32]');
  await waitForPublished(ns, 'db', '198.51.100.10');
  const refused = await waitForAddress(ns, 'db', '198.51.100.20', (a) => a.reason === 'RefusedByPolicy');
  t.is(refused.message, `ExternalBackendPolicy ${policy} denies address 198.51.100.20 (inside deniedCIDRs 198.51.100.20/32)`);
  const degraded = (await getBackend(ns, 'db'))?.status;
  t.is(degraded?.state, 'Degraded');

  await applyPolicy(t, policy, team, 'allowedCIDRs: [198.51.100.0/24]');
  await waitForPublished(ns, 'db', '198.51.100.10,198.51.100.20');
  await waitForAddress(ns, 'db', '198.51.100.20', (a) => a.ready);

  // The namespace loses the label the policy selected, then a stricter policy selects it by another.
  await applyPolicy(t, `${policy}-strict`, `${team}-strict`, 'allowedCIDRs: [198.51.100.10/32]');
  await kubectl(['label', 'namespace', ns, `${TEAM_LABEL}=${team}-strict`, '--overwrite']);
  await waitForPublished(ns, 'db', '198.51.100.10');
  await kubectl(['label', 'namespace', ns, `${TEAM_LABEL}=${team}`, '--overwrite']);
  await waitForPublished(ns, 'db', '198.51.100.10,198.51.100.20');

  await applyPolicy(t, policy, team, 'allowedServiceTypes: [Headless]');
  const rejected = await waitFor('the backend to be refused as a whole', async () => {
    const s = (await getBackend(ns, 'db'))?.status;
    return s?.state === 'Rejected' ? s : false;
  });
  t.deepEqual(rejected.conditions?.find((c) => c.type === 'Accepted'), {
    ...rejected.conditions?.find((c) => c.type === 'Accepted'),
    status: 'False',
    reason: 'RefusedByPolicy',
    message: `nothing is published: ExternalBackendPolicy ${policy} does not allow Services of type ClusterIP (allowedServiceTypes: Headless)`,
  });
  await waitFor('the Service to be deleted', async () => !(await kubectl(['-n', ns, 'get', 'service', 'db', '--ignore-not-found', '-o', 'name'])).stdout.trim());
  await waitForPublished(ns, 'db', '');

  await applyPolicy(t, policy, team, 'allowedServiceTypes: [ClusterIP]');
  await waitForPublished(ns, 'db', '198.51.100.10,198.51.100.20');
  t.truthy((await kubectl(['-n', ns, 'get', 'service', 'db', '-o', 'name'])).stdout.trim());
});

test('--require-policy: a namespace no policy matches publishes nothing until one does', async (t) => {
  const { ns, team } = await teamNamespace(t, 'require');
  await startTestOperator(t, ns, { requirePolicy: true });
  await applyYaml(backendYaml(ns, 'db', '[{ip: 198.51.100.10}]'));
  const rejected = await waitFor('the backend to be refused', async () => {
    const s = (await getBackend(ns, 'db'))?.status;
    return s?.state === 'Rejected' ? s : false;
  });
  t.regex(rejected.conditions?.find((c) => c.type === 'Accepted')?.message ?? '', /no ExternalBackendPolicy matches this namespace, and the operator requires one \(--require-policy\)/);
  t.is((await kubectl(['-n', ns, 'get', 'service', 'db', '--ignore-not-found', '-o', 'name'])).stdout.trim(), '');
  t.is(await published(ns, 'db'), '');

  await applyPolicy(t, `require-${team}`, team, 'allowedCIDRs: [198.51.100.0/24]');
  await waitForPublished(ns, 'db', '198.51.100.10');
});

test('a user with the shipped edit role manages ExternalBackends but cannot touch a policy', async (t) => {
  // The aggregated roles from config/base/rbac.yaml (its other objects need the install namespace).
  const roles = repoFile('config', 'base', 'rbac.yaml').split(/^---$/m).filter((doc) => /name: extbackend-(edit|view)\n/.test(doc));
  t.is(roles.length, 2);
  await applyYaml(roles.join('\n---\n'));
  const { ns, team } = await teamNamespace(t, 'rbac');
  const user = `alice-${team}`;
  await kubectl(['-n', ns, 'create', 'rolebinding', 'alice-edit', '--clusterrole=edit', `--user=${user}`]);
  await applyPolicy(t, `rbac-${team}`, team, 'allowedCIDRs: [198.51.100.0/24]');
  const as = ['--as', user];

  await waitFor('the edit role to aggregate ExternalBackends', async () => (await kubectl([...as, '-n', ns, 'auth', 'can-i', 'create', 'externalbackends'])).stdout.trim() === 'yes');
  await kubectl([...as, 'apply', '-f', '-'], backendYaml(ns, 'db', '[{ip: 198.51.100.10}]'));
  t.truthy(await getBackend(ns, 'db'));

  const patch = await kubectl([...as, 'patch', 'externalbackendpolicy', `rbac-${team}`, '--type=merge', '-p', '{"spec":{"allowedCIDRs":["0.0.0.0/0"]}}']).then(
    () => 'allowed',
    (err: Error) => err.message,
  );
  // kubectl patch reads the object first; either verb refused means no write.
  t.regex(patch, new RegExp(`Forbidden.*User "${user}" cannot (get|patch) resource "externalbackendpolicies"`));
  const create = await kubectl([...as, 'apply', '-f', '-'], `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackendPolicy\nmetadata: {name: alice-${team}}\nspec: {namespaceSelector: {matchLabels: {${TEAM_LABEL}: nobody}}}\n`).then(
    () => 'allowed',
    (err: Error) => err.message,
  );
  t.regex(create, /forbidden/);
});
