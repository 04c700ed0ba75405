// ExternalBackendPolicy as the operator applies it: a pure function of the policies,
// the namespace's labels and one address.
import test from 'ava';
import { buildAddressPolicy, hostnameAllowed, matchingPolicies, outsidePorts, POLICY_REASON, refuseByPolicy, refuseSpecByPolicy, selectorMatches, type PolicyAddress } from '../../src/operator/address-policy.ts';
import { AddressResolver, type PolicyCheck } from '../../src/operator/address-resolver.ts';
import type { ExternalBackendPolicy, ExternalBackendPolicySpec, LabelSelector } from '../../src/api/external-backend-policy.ts';

function policy(name: string, spec: Partial<ExternalBackendPolicySpec>): ExternalBackendPolicy {
  return { apiVersion: 'extbackend.io/v1alpha1', kind: 'ExternalBackendPolicy', metadata: { name }, spec: { namespaceSelector: {}, ...spec } };
}

const teamA = { team: 'a' };
const open = { requirePolicy: false };

// team-a may use 10.20.0.0/16 and *.db.internal on 5432 only, never the payments /24 inside it.
const teamAPolicy = policy('team-a', {
  namespaceSelector: { matchLabels: teamA },
  allowedCIDRs: ['10.20.0.0/16', '2001:db8:20::/48'],
  deniedCIDRs: ['10.20.99.0/24'],
  allowedHostnames: ['*.db.internal', 'exact.example.com'],
  allowedPorts: [{ port: 5432 }, { port: 9000, endPort: 9010 }],
});

const addressCases: [string, PolicyAddress, string | undefined][] = [
  ['an allowed IP on an allowed port', { ip: '10.20.1.5', ports: [5432] }, undefined],
  ['an allowed IPv6 address', { ip: '2001:db8:20::5', ports: [5432] }, undefined],
  ['a port at the end of a range', { ip: '10.20.1.5', ports: [9010] }, undefined],
  ['an IP outside allowedCIDRs', { ip: '10.30.0.1', ports: [5432] }, 'ExternalBackendPolicy team-a does not allow address 10.30.0.1 (allowedCIDRs: 10.20.0.0/16, 2001:db8:20::/48)'],
  ['an IP of the other family', { ip: '2001:db8:21::1' }, 'ExternalBackendPolicy team-a does not allow address 2001:db8:21::1 (allowedCIDRs: 10.20.0.0/16, 2001:db8:20::/48)'],
  ['a denied CIDR inside an allowed one (deny wins)', { ip: '10.20.99.7', ports: [5432] }, 'ExternalBackendPolicy team-a denies address 10.20.99.7 (inside deniedCIDRs 10.20.99.0/24)'],
  ['a port outside allowedPorts', { ip: '10.20.1.5', ports: [5432, 22] }, 'ExternalBackendPolicy team-a does not allow port 22 (allowedPorts: 5432, 9000-9010)'],
  ['a name under an allowed suffix, any depth', { hostname: 'x.y.db.internal', ports: [5432] }, undefined],
  ['an exact name, case and trailing dot aside', { hostname: 'Exact.Example.com.', ports: [5432] }, undefined],
  ['the suffix itself', { hostname: 'db.internal' }, 'ExternalBackendPolicy team-a does not allow hostname db.internal (allowedHostnames: *.db.internal, exact.example.com)'],
  ['a name merely ending in the suffix text', { hostname: 'evildb.internal' }, 'ExternalBackendPolicy team-a does not allow hostname evildb.internal (allowedHostnames: *.db.internal, exact.example.com)'],
];

for (const [what, address, expected] of addressCases) {
  test(`team-a's policy: ${what}`, (t) => {
    t.is(refuseByPolicy([teamAPolicy], teamA, address, open)?.message, expected);
  });
}

test('a namespace no policy matches is unrestricted, unless a policy is required', (t) => {
  const address = { ip: '192.0.2.1', ports: [80] };
  t.is(refuseByPolicy([teamAPolicy], { team: 'b' }, address, open), undefined);
  const refused = refuseByPolicy([teamAPolicy], { team: 'b' }, address, { requirePolicy: true });
  t.is(refused?.policy, undefined);
  t.regex(refused!.message, /no ExternalBackendPolicy matches this namespace.*--require-policy/);
  t.regex(refuseSpecByPolicy([], {}, { addresses: [], ports: [{ port: 80 }] }, { requirePolicy: true })!.message, /--require-policy/);
});

test('every matching policy must allow an address: the first refusing one by name is reported', (t) => {
  const wide = policy('a-wide', { allowedCIDRs: ['10.0.0.0/8'] });
  const narrow = policy('b-narrow', { allowedCIDRs: ['10.20.0.0/16'] });
  const deny = policy('c-deny', { deniedCIDRs: ['10.20.5.0/24'] });
  const all = [deny, narrow, wide];
  t.is(refuseByPolicy(all, {}, { ip: '10.20.1.1' }, open), undefined);
  t.is(refuseByPolicy(all, {}, { ip: '10.30.1.1' }, open)?.policy, 'b-narrow');
  t.is(refuseByPolicy(all, {}, { ip: '192.0.2.1' }, open)?.policy, 'a-wide');
  t.is(refuseByPolicy(all, {}, { ip: '10.20.5.1' }, open)?.policy, 'c-deny');
});

test('an empty list allows nothing of its kind; a missing field restricts nothing', (t) => {
  t.is(refuseByPolicy([policy('none', { allowedCIDRs: [] })], {}, { ip: '10.0.0.1' }, open)?.message, 'ExternalBackendPolicy none does not allow address 10.0.0.1 (allowedCIDRs: none)');
  t.is(refuseByPolicy([policy('ips-only', { allowedHostnames: [] })], {}, { hostname: 'a.example.com' }, open)?.policy, 'ips-only');
  t.is(refuseByPolicy([policy('ports-only', { allowedPorts: [{ port: 443 }] })], {}, { ip: '203.0.113.1', hostname: 'a.example.com', ports: [443] }, open), undefined);
});

test('label selectors read as the API server reads them', (t) => {
  const cases: [LabelSelector, Record<string, string>, boolean][] = [
    [{}, {}, true],
    [{ matchLabels: { team: 'a' } }, { team: 'a', env: 'prod' }, true],
    [{ matchLabels: { team: 'a' } }, { team: 'b' }, false],
    [{ matchLabels: { team: 'a' } }, {}, false],
    [{ matchExpressions: [{ key: 'team', operator: 'In', values: ['a', 'b'] }] }, { team: 'b' }, true],
    [{ matchExpressions: [{ key: 'team', operator: 'In', values: ['a'] }] }, {}, false],
    [{ matchExpressions: [{ key: 'team', operator: 'NotIn', values: ['a'] }] }, {}, true],
    [{ matchExpressions: [{ key: 'team', operator: 'NotIn', values: ['a'] }] }, { team: 'a' }, false],
    [{ matchExpressions: [{ key: 'team', operator: 'Exists' }] }, { team: '' }, true],
    [{ matchExpressions: [{ key: 'team', operator: 'DoesNotExist' }] }, { team: 'a' }, false],
    [{ matchLabels: { team: 'a' }, matchExpressions: [{ key: 'env', operator: 'In', values: ['prod'] }] }, { team: 'a', env: 'dev' }, false],
    [{ matchLabels: { toString: 'x' } }, {}, false],
  ];
  for (const [selector, labels, expected] of cases) t.is(selectorMatches(selector, labels), expected, JSON.stringify([selector, labels]));
  t.deepEqual(matchingPolicies([policy('z', {}), teamAPolicy, policy('b', { namespaceSelector: { matchLabels: { team: 'b' } } })], teamA).map((p) => p.metadata.name), ['team-a', 'z']);
});

test('Service and health-check types are judged on the whole spec', (t) => {
  const p = policy('no-nodeports', { allowedServiceTypes: ['ClusterIP', 'Headless'], allowedHealthCheckTypes: ['tcp'] });
  const spec = { addresses: [{ ip: '10.20.0.1' }], ports: [{ port: 80 }] };
  t.is(refuseSpecByPolicy([p], {}, spec, open), undefined, 'ClusterIP is the default type');
  t.is(refuseSpecByPolicy([p], {}, { ...spec, service: { type: 'NodePort' } }, open)?.message, 'ExternalBackendPolicy no-nodeports does not allow Services of type NodePort (allowedServiceTypes: ClusterIP, Headless)');
  t.is(refuseSpecByPolicy([p], {}, { ...spec, healthCheck: { type: 'http' } }, open)?.message, 'ExternalBackendPolicy no-nodeports does not allow http health checks (allowedHealthCheckTypes: tcp)');
  t.is(refuseSpecByPolicy([p], {}, { ...spec, healthCheck: { type: 'tcp' } }, open), undefined);
});

test('the ports an address brings in: target ports, per-address overrides, a numeric probe port', (t) => {
  const spec = { addresses: [], ports: [{ name: 'pg', port: 5432 }, { name: 'web', port: 80, targetPort: 8080 }], healthCheck: { type: 'tcp' as const, port: 9000 } };
  t.deepEqual(outsidePorts(spec, { ip: '10.0.0.1' }), [5432, 8080, 9000]);
  t.deepEqual(outsidePorts(spec, { ip: '10.0.0.1', targetPorts: { pg: 6432 } }), [6432, 8080, 9000]);
  t.deepEqual(outsidePorts({ ...spec, healthCheck: { type: 'tcp', port: 'pg' } }, { ip: '10.0.0.1' }), [5432, 8080]);
});

test('hostname patterns: only "*." is a wildcard', (t) => {
  t.true(hostnameAllowed(['*.db.internal'], 'a.db.internal'));
  t.false(hostnameAllowed(['a*.db.internal'], 'ab.db.internal'));
  t.false(hostnameAllowed([], 'a.db.internal'));
});

test('the resolver: built-in refusals first, then the policy; a refused name is not looked up', async (t) => {
  const looked: string[] = [];
  const answers: Record<string, string[]> = { 'db.example.test': ['198.51.100.5', '192.0.2.9', '127.0.0.1'] };
  const resolver = new AddressResolver((name) => {
    looked.push(name);
    return Promise.resolve({ addresses: answers[name] ?? [], ttlSeconds: 30 });
  });
  const p = policy('lab', { allowedCIDRs: ['198.51.100.0/24'], allowedHostnames: ['*.example.test'] });
  const check: PolicyCheck = (address, ip) => refuseByPolicy([p], {}, ip === undefined ? { hostname: address.hostname } : { ip }, open);
  const cluster = buildAddressPolicy({ serviceCIDRs: [], podCIDRs: [], nodeIPs: [], apiServerIPs: [] }, false);
  const { resolved } = await resolver.resolve([{ hostname: 'db.example.test' }, { hostname: 'other.test' }, { ip: '192.0.2.1' }, { ip: '198.51.100.1' }], cluster, check);
  const [name, other, outside, inside] = resolved;
  t.deepEqual(name!.ips, ['198.51.100.5']);
  t.deepEqual(name!.refused?.map((r) => [r.ip, r.policy]), [['192.0.2.9', 'lab'], ['127.0.0.1', undefined]]);
  t.regex(name!.refused![1]!.message, /loopback/);
  t.deepEqual(other!.problem, { reason: POLICY_REASON, message: 'ExternalBackendPolicy lab does not allow hostname other.test (allowedHostnames: *.example.test)' });
  t.deepEqual(looked, ['db.example.test'], 'the refused name was not looked up');
  t.deepEqual([outside!.ips, outside!.problem?.reason], [[], POLICY_REASON]);
  t.deepEqual(inside!.ips, ['198.51.100.1']);
});
