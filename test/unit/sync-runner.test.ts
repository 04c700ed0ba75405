import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { SyncRunner } from '../../src/agent/sync-runner.ts';

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
