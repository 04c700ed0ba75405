import test from 'ava';
import { parseExpectedStatuses, runProbe } from '../../src/probes/probe.ts';
import { ProbeScheduler } from '../../src/probes/scheduler.ts';
import { planProbes } from '../../src/probes/targets.ts';
import { initialHealth, recordResult, type TargetHealth } from '../../src/probes/threshold.ts';
import type { ExternalBackend } from '../../src/api/external-backend.ts';

const t3 = { successThreshold: 2, failureThreshold: 3 };

function feed(start: TargetHealth, results: boolean[]): { state: TargetHealth; flips: number } {
  let state = start;
  let flips = 0;
  for (const ok of results) {
    const next = recordResult(state, ok, ok ? undefined : 'HTTP 500', t3, 'now');
    if (next.state.healthy !== state.healthy) flips++;
    state = next.state;
  }
  return { state, flips };
}

test('thresholds: failureThreshold failures take a ready target out, successThreshold successes bring it back', (t) => {
  const ready = initialHealth(true);
  t.true(feed(ready, [false, false]).state.healthy);
  t.false(feed(ready, [false, false, false]).state.healthy);
  t.true(feed(initialHealth(false), [true, true]).state.healthy);
  t.false(feed(initialHealth(false), [true]).state.healthy);
  t.is(feed(ready, [false, false, false]).state.lastError, 'HTTP 500');
});

test('alternating pass/fail inside the thresholds never flips', (t) => {
  t.is(feed(initialHealth(true), Array.from({ length: 50 }, (_, i) => i % 2 === 0)).flips, 0);
  t.is(feed(initialHealth(false), Array.from({ length: 50 }, (_, i) => i % 2 === 0)).flips, 0);
});

test('only a flip or the first result asks for a reconcile', (t) => {
  const first = recordResult(initialHealth(true), true, undefined, t3, 'a');
  t.true(first.changed, 'first result');
  t.false(recordResult(first.state, true, undefined, t3, 'b').changed);
  t.false(recordResult(first.state, false, 'x', t3, 'b').changed);
});

test('expected statuses parse single codes and ranges', (t) => {
  t.deepEqual(parseExpectedStatuses(undefined), [[200, 399]]);
  t.deepEqual(parseExpectedStatuses(['204', '300-302']), [[204, 204], [300, 302]]);
});

test('never probes loopback, link-local or metadata addresses', async (t) => {
  for (const ip of ['127.0.0.1', '169.254.169.254', '::1', 'fe80::1']) {
    const r = await runProbe(ip, 80, { type: 'tcp', timeoutMs: 100 });
    t.false(r.ok);
    t.regex(r.error!, /refusing to probe/);
  }
});

test('probe plan: per TCP port by default, one target for a named or numbered port', (t) => {
  const eb = {
    metadata: { name: 'x', namespace: 'ns' },
    spec: {
      addresses: [{ ip: '198.18.0.2', targetPorts: { web: 8081 } }],
      ports: [{ name: 'web', port: 80 }, { name: 'admin', port: 9000 }, { name: 'dns', port: 53, protocol: 'UDP' }],
      healthCheck: { type: 'tcp' },
    },
  } as unknown as ExternalBackend;
  const resolved = [{ spec: eb.spec.addresses[0]!, key: '198.18.0.2', ips: ['198.18.0.2'] }];
  const plan = planProbes(eb, resolved, undefined, () => undefined);
  t.deepEqual(plan.targets.map((x) => x.port), [8081, 9000], 'the per-address override is probed; UDP is not');
  t.is(plan.keyFor('198.18.0.2', eb.spec.ports[2]!), plan.keyFor('198.18.0.2', eb.spec.ports[0]!), 'UDP follows the first TCP port');
  eb.spec.healthCheck = { type: 'http', port: 'admin' };
  const named = planProbes(eb, resolved, undefined, () => undefined);
  t.deepEqual(named.targets.map((x) => x.port), [9000]);
  eb.spec.healthCheck = { type: 'http', port: 'nope' };
  t.regex(planProbes(eb, resolved, undefined, () => undefined).problems[0]!, /healthCheck.port names port "nope"/);
});

// Node's HTTP client throws synchronously on these; each was an operator crash (issue 14).
// None of them opens a socket: the request is refused before any connection.
const unsendable: [string, Parameters<typeof runProbe>[2], RegExp][] = [
  ['a path with a space', { type: 'http', timeoutMs: 1000, http: { path: '/a b', headers: [], expected: [[200, 399]] } }, /cannot be sent: Request path contains unescaped characters/],
  ['a header value with a newline', { type: 'http', timeoutMs: 1000, http: { path: '/', headers: [{ name: 'x', value: 'a\nb' }], expected: [[200, 399]] } }, /cannot be sent: Invalid character in header content \["x"\]/],
  ['a host with CR LF', { type: 'http', timeoutMs: 1000, http: { path: '/', host: 'a b\r\n', headers: [], expected: [[200, 399]] } }, /cannot be sent: Invalid character in header content \["host"\]/],
  ['a header name with a space', { type: 'http', timeoutMs: 1000, http: { path: '/', headers: [{ name: 'a b', value: 'x' }], expected: [[200, 399]] } }, /cannot be sent: Header name must be a valid HTTP token/],
  ['an https key that is not PEM', { type: 'https', timeoutMs: 1000, http: { path: '/', headers: [], expected: [[200, 399]] }, tls: { cert: 'garbage', key: 'garbage' } }, /TLS: the certificate, key or CA cannot be used/],
  ['a gRPC key that is not PEM', { type: 'grpc', timeoutMs: 1000, tls: { cert: 'garbage', key: 'garbage' } }, /TLS: the certificate, key or CA cannot be used/],
];

for (const [what, spec, message] of unsendable) {
  test(`a probe Node refuses to send (${what}) is a failed probe with the reason, never a throw`, async (t) => {
    const result = await runProbe('198.51.100.1', 80, spec);
    t.false(result.ok);
    t.is(result.outcome, 'error');
    t.regex(result.error ?? '', message);
  });
}

test('the scheduler turns a probe that throws or rejects into a failed result and keeps probing', async (t) => {
  const flips: string[] = [];
  let calls = 0;
  const scheduler = new ProbeScheduler({
    onChange: (owner) => flips.push(owner),
    newTargetJitterMs: 0,
    probe: () => {
      calls++;
      if (calls === 1) throw new Error('thrown synchronously');
      return Promise.reject(new Error('rejected'));
    },
  });
  t.teardown(() => scheduler.stop());
  scheduler.setTargets('ns/a', [{ key: 'k', owner: 'ns/a', ip: '198.51.100.1', port: 80, spec: { type: 'tcp', timeoutMs: 10 }, thresholds: { successThreshold: 1, failureThreshold: 1 }, periodMs: 20, initialDelayMs: 0 }]);
  const health = await new Promise<TargetHealth>((resolve) => {
    const poll = setInterval(() => {
      const h = scheduler.health('k');
      if (calls >= 3 && h) {
        clearInterval(poll);
        resolve(h);
      }
    }, 5);
  });
  t.false(health.healthy);
  t.is(health.lastError, 'rejected');
  t.deepEqual(flips, ['ns/a'], 'the first result is reported once');
});
