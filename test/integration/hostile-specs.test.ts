// Input a namespace user controls that the API server accepts but that once crashed the
// operator or stalled it silently (issue 14): each is now a status message, and the
// operator keeps serving every other backend.
import test from 'ava';
import { applyYaml, kubectl, testNamespace, waitFor } from '../helpers/cluster.ts';
import { startTestOperator } from '../helpers/operator.ts';

interface Status {
  state?: string;
  addresses?: { address: string; ready: boolean; message?: string }[];
  conditions?: { type: string; status: string; reason: string; message: string }[];
}

async function status(ns: string, name: string): Promise<Status | undefined> {
  const { stdout } = await kubectl(['-n', ns, 'get', 'externalbackend', name, '-o', 'json', '--ignore-not-found']);
  return stdout.trim() ? (JSON.parse(stdout) as { status?: Status }).status : undefined;
}

async function waitForMessage(ns: string, name: string, message: RegExp): Promise<string> {
  return waitFor(`${ns}/${name}'s status to say ${String(message)}`, async () => {
    const text = JSON.stringify(await status(ns, name));
    return message.test(text) ? text : false;
  });
}

// The address is never contacted: each probe is refused before a socket is opened.
const backend = (ns: string, name: string, healthCheck: string): string => `
apiVersion: extbackend.io/v1alpha1
kind: ExternalBackend
metadata: {name: ${name}, namespace: ${ns}}
spec:
  addresses: [{ip: 198.51.100.10}]
  ports: [{port: 443}]
  healthCheck: ${healthCheck}
`;

test('a client certificate Secret that is not PEM is a failed probe with the reason, and the operator keeps reconciling', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  await kubectl(['-n', ns, 'create', 'secret', 'generic', 'garbage', '--from-literal=tls.crt=garbage', '--from-literal=tls.key=garbage']);
  await applyYaml(backend(ns, 'https-garbage', '{type: https, periodSeconds: 1, tls: {secretName: garbage}}'));
  await applyYaml(backend(ns, 'grpc-garbage', '{type: grpc, periodSeconds: 1, tls: {secretName: garbage}}'));
  for (const name of ['https-garbage', 'grpc-garbage']) {
    t.regex(await waitForMessage(ns, name, /TLS: the certificate, key or CA cannot be used/), /NotReady/);
  }
  // Probed again every period: still alive, still reconciling a neighbour.
  await applyYaml(backend(ns, 'neighbour', 'null').replace('  healthCheck: null\n', ''));
  await waitFor('the neighbour to be Ready', async () => (await status(ns, 'neighbour'))?.state === 'Ready');
  t.regex(JSON.stringify(await status(ns, 'https-garbage')), /cannot be used/);
});

// What the API server (or Node's HTTP client) would refuse later is refused at the door,
// with a message that says what to write instead.
const refused: [string, string, RegExp][] = [
  ['nodeName with a slash and a newline', 'addresses: [{ip: 198.51.100.1, nodeName: "/x\\ny"}]', /nodeName: Invalid value.*must be a node name: a DNS subdomain/],
  ['nodeName in upper case', 'addresses: [{ip: 198.51.100.1, nodeName: Node-1}]', /must be a node name/],
  ['zone with a space', 'addresses: [{ip: 198.51.100.1, zone: "zone a"}]', /zone: Invalid value.*must be a label value/],
  ['region with a newline', 'addresses: [{ip: 198.51.100.1, region: "eu\\n"}]', /region: Invalid value.*must be a label value/],
  ['topology key with a space', 'addresses: [{ip: 198.51.100.1, topology: {"rack id": r1}}]', /topology keys are label keys, such as example.com\/rack/],
  ['topology value with a slash', 'addresses: [{ip: 198.51.100.1, topology: {rack: "a/b"}}]', /topology values are label values/],
  ['appProtocol with a space', 'addresses: [{ip: 198.51.100.1}]\n  ports: [{port: 80, appProtocol: "h t t p"}]', /must be a qualified name such as http or kubernetes.io\/h2c/],
  ['topologyKeys entry with a space', 'addresses: [{ip: 198.51.100.1}]\n  service: {topologyKeys: ["my zone"]}', /each topology key is a node label key/],
  ['http path with a space', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {path: "/a b"}}', /percent-encode spaces/],
  ['http path without a leading slash', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {path: "healthz"}}', /must start with \//],
  ['http path with a non-ASCII character', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {path: "/café"}}', /only visible ASCII characters/],
  ['http host with CR LF', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {host: "a b\\r\\n"}}', /must be a host name or bracketed IPv6 address/],
  ['http header value with a newline', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {headers: [{name: x-a, value: "a\\nb"}]}}', /no line breaks/],
  ['http header value with a non-ASCII character', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {headers: [{name: x-a, value: "€"}]}}', /printable ASCII/],
  ['http header name with a colon', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {headers: [{name: "x:a", value: b}]}}', /must be an HTTP header name/],
  ['expected status range upside down', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: http, http: {expectedStatuses: ["299-200"]}}', /from the lower status code to the higher one/],
  ['TLS server name with a space', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: https, tls: {serverName: "a b"}}', /must be a DNS name/],
  ['TLS secret name with a slash', 'addresses: [{ip: 198.51.100.1}]\n  healthCheck: {type: https, tls: {secretName: "../x"}}', /must be a Secret name/],
];

test('the CRD refuses what the API server or the HTTP client would refuse later, with a message that says what to write', async (t) => {
  const ns = await testNamespace(t);
  for (const [what, spec, message] of refused) {
    const body = spec.includes('ports:') ? spec : `${spec.split('\n')[0]}\n  ports: [{port: 80}]${spec.includes('\n') ? `\n${spec.split('\n').slice(1).join('\n')}` : ''}`;
    const yaml = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: bad, namespace: ${ns}}\nspec:\n  ${body}\n`;
    const err = await t.throwsAsync(kubectl(['apply', '--dry-run=server', '-f', '-'], yaml), undefined, what);
    t.regex(err?.message ?? '', message, what);
  }
  // And what is fine still is: a qualified appProtocol, a node name with dots, a prefixed topology key, an IPv6 Host with a port.
  const fine = `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: fine, namespace: ${ns}}\nspec:
  addresses: [{ip: 198.51.100.1, nodeName: node-1.example.com, zone: zone-a, region: eu_west.1, topology: {example.com/rack: r1}}]
  ports: [{port: 80, appProtocol: kubernetes.io/h2c}]
  service: {topologyKeys: [topology.kubernetes.io/zone, "*"]}
  healthCheck: {type: https, http: {path: "/healthz?x=%20y", host: "[2001:db8::1]:8443", headers: [{name: X-Token, value: "a b\\tc"}], expectedStatuses: ["200-299"]}, tls: {serverName: api.example.com, secretName: probe-ca}}\n`;
  await kubectl(['apply', '--dry-run=server', '-f', '-'], fine);
});

test('a slice the API server refuses (topology too large for one annotation) is Accepted=False with the API server\'s message, not a silent retry', async (t) => {
  const ns = await testNamespace(t);
  await startTestOperator(t, ns);
  // 100 addresses (one slice) with 16 topology labels of about 310 characters each: about 500 kB of
  // extbackend.io/endpoint-topology, over the 256 kB the API server allows per object's annotations.
  const key = (i: number): string => `${'p'.repeat(180)}.example.com/${'k'.repeat(48)}-${i}`;
  const topology = `{${Array.from({ length: 16 }, (_, i) => `${key(i)}: ${'v'.repeat(63)}`).join(', ')}}`;
  const addresses = Array.from({ length: 100 }, (_, i) => `{ip: 198.51.100.${i + 1}, topology: ${topology}}`).join(', ');
  // create, not apply: apply's last-applied annotation alone would be too long for the ExternalBackend.
  await kubectl(['create', '-f', '-'], `apiVersion: extbackend.io/v1alpha1\nkind: ExternalBackend\nmetadata: {name: huge, namespace: ${ns}}\nspec:\n  addresses: [${addresses}]\n  ports: [{port: 80}]\n`);
  const accepted = await waitFor('Accepted=False', async () => {
    const c = (await status(ns, 'huge'))?.conditions?.find((x) => x.type === 'Accepted');
    return c?.status === 'False' ? c : false;
  });
  t.is(accepted.reason, 'EndpointSliceRejected');
  t.regex(accepted.message, /the API server rejected EndpointSlice huge-.*metadata.annotations: Too long/);
  t.is((await status(ns, 'huge'))?.state, 'Rejected');
  // Fixed by the user: accepted again.
  await kubectl(['-n', ns, 'patch', 'externalbackend', 'huge', '--type=merge', '-p', '{"spec":{"addresses":[{"ip":"198.51.100.1"}]}}']);
  await waitFor('Accepted=True after the fix', async () => (await status(ns, 'huge'))?.conditions?.find((x) => x.type === 'Accepted')?.status === 'True');
  t.pass();
});
