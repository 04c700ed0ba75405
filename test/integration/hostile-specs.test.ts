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
  addresses: [{ip: 192.0.2.10}]
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

for (const [what, http] of [
  ['a path with a space', '{path: "/a b"}'],
  ['a header value with a newline', '{headers: [{name: x-probe, value: "a\\nb"}]}'],
  ['a Host with CR LF', '{host: "a b\\r\\n"}'],
] as const) {
  test(`an http health check Node cannot send (${what}) is a failed probe with the reason, never a crash`, async (t) => {
    const ns = await testNamespace(t);
    await startTestOperator(t, ns);
    await applyYaml(backend(ns, 'hostile', `{type: http, periodSeconds: 1, http: ${http}}`));
    await waitForMessage(ns, 'hostile', /the probe request cannot be sent/);
    await applyYaml(backend(ns, 'neighbour', 'null').replace('  healthCheck: null\n', ''));
    await waitFor('the neighbour to be Ready', async () => (await status(ns, 'neighbour'))?.state === 'Ready');
    t.regex(JSON.stringify(await status(ns, 'hostile')), /cannot be sent/);
  });
}
