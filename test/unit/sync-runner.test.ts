import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { proxyHealth, SyncRunner } from '../../src/agent/sync-runner.ts';

test('nothing runs before start, bursts collapse, failures force a full sync', async (t) => {
  const runs: boolean[] = [];
  let fail = false;
  const runner = new SyncRunner({
    minIntervalMs: 50,
    maxIntervalMs: 10_000,
    sync: (full) => {
      runs.push(full);
      return fail ? Promise.reject(new Error('boom')) : Promise.resolve();
    },
    onError: () => undefined,
  });
  runner.request();
  runner.request();
  await sleep(100);
  t.deepEqual(runs, [], 'requests before start (caches still filling) program nothing');
  runner.start();
  await sleep(20);
  t.deepEqual(runs, [true], 'the first sync is full');
  for (let i = 0; i < 10; i++) runner.request();
  await sleep(120);
  t.deepEqual(runs, [true, false], 'ten requests, one partial sync');
  fail = true;
  runner.request();
  await sleep(80);
  fail = false;
  await sleep(150);
  t.is(runs[2], false);
  t.is(runs[3], true, 'after a failure the retry is full');
  t.is(runner.pendingSince, undefined);
  runner.stop();
});

// kube-proxy's promises of the sync loop: a full resync on a timer and after a failed
// apply, and /healthz failing once a queued change has waited too long.
async function until(what: string, done: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !done(); i++) await sleep(10);
  if (!done()) throw new Error(`never: ${what}`);
}

test('the first sync is full, a requested change is partial, and the timer brings a full resync', async (t) => {
  const kinds: boolean[] = [];
  const runner = new SyncRunner({ minIntervalMs: 5, maxIntervalMs: 100, sync: (full) => {
      kinds.push(full);
      return Promise.resolve();
    }, onError: () => undefined });
  t.teardown(() => runner.stop());
  runner.start();
  await until('the first sync', () => kinds.length === 1);
  runner.request();
  await until('the requested sync', () => kinds.length === 2);
  // Nothing requested: the next run is the periodic one.
  await until('the periodic sync', () => kinds.length === 3);
  t.deepEqual(kinds, [true, false, true]);
});

test('after a failed sync the retry is full, and the change stays queued until it succeeds', async (t) => {
  const kinds: boolean[] = [];
  let fail = false;
  const errors: number[] = [];
  const runner = new SyncRunner({
    minIntervalMs: 5,
    maxIntervalMs: 10_000,
    sync: (full) => {
      kinds.push(full);
      return fail ? Promise.reject(new Error('iptables-restore failed')) : Promise.resolve();
    },
    onError: (_err, retryInMs) => void errors.push(retryInMs),
  });
  t.teardown(() => runner.stop());
  runner.start();
  await until('the first sync', () => kinds.length === 1);
  fail = true;
  runner.request();
  await until('the failed sync', () => errors.length === 1);
  t.not(runner.pendingSince, undefined, 'the change is still waiting');
  fail = false;
  await until('the retry', () => kinds.length === 3);
  t.deepEqual(kinds, [true, false, true], 'the retry is a full sync');
  t.is(runner.pendingSince, undefined);
  t.true(errors[0]! < 10_000, 'retried with backoff, not after a whole sync period');
});

test('/healthz: unhealthy before the first sync and while a change has waited longer than the limit', (t) => {
  const limit = 60_000; // two sync periods of 30 s
  const now = 1_000_000;
  const cases: [string, { lastSuccess?: number; pendingSince?: number }, boolean][] = [
    ['never synced', {}, false],
    ['synced, nothing queued', { lastSuccess: now - 500_000 }, true],
    ['a change queued for a sync period', { lastSuccess: now - 500_000, pendingSince: now - 30_000 }, true],
    ['a change queued for exactly the limit', { lastSuccess: now - 500_000, pendingSince: now - limit }, true],
    ['a change queued longer than the limit', { lastSuccess: now - 500_000, pendingSince: now - limit - 1 }, false],
  ];
  for (const [what, state, healthy] of cases) t.is(proxyHealth(state, now, limit) === undefined, healthy, what);
  t.regex(proxyHealth({ lastSuccess: 0, pendingSince: now - 90_000 }, now, limit)!, /waited 90 s/);
});
