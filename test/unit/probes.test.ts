import test from 'ava';
import { parseExpectedStatuses, runProbe } from '../../src/probes/probe.ts';
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
