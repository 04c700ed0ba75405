import test from 'ava';
import { WorkQueue } from '../../src/runtime/workqueue.ts';

test('a key waits at most once and is never processed twice at a time', async (t) => {
  const q = new WorkQueue();
  q.add('a');
  q.add('a');
  q.add('b');
  t.is(q.length, 2);
  const first = await q.get();
  t.is(first, 'a');
  q.add('a'); // while processing: must not be handed to another worker yet
  t.is(await q.get(), 'b');
  t.is(q.length, 0);
  q.done('a'); // now it is queued again
  t.is(q.length, 1);
  t.is(await q.get(), 'a');
  q.done('a');
  q.done('b');
  q.shutdown();
  t.is(await q.get(), undefined);
});

test('delayed adds keep the earliest time and backoff grows per key', async (t) => {
  const q = new WorkQueue({ baseDelayMs: 10, maxDelayMs: 40 });
  t.is(q.addRateLimited('x'), 10);
  t.is(q.addRateLimited('x'), 20);
  t.is(q.addRateLimited('x'), 40);
  t.is(q.addRateLimited('x'), 40, 'capped');
  q.forget('x');
  t.is(q.addRateLimited('x'), 10, 'forget resets the backoff');
  const start = Date.now();
  t.is(await q.get(), 'x');
  t.true(Date.now() - start >= 5);
  q.done('x');
  q.shutdown();
});

test('waiting workers are woken by add', async (t) => {
  const q = new WorkQueue();
  const pending = q.get();
  q.add('k');
  t.is(await pending, 'k');
  q.done('k');
  q.shutdown();
});

test('retryNow: keys backing off after failures go again at once, with their history cleared; delayed requeues are left alone', async (t) => {
  const q = new WorkQueue({ baseDelayMs: 60_000 });
  t.teardown(() => q.shutdown());
  q.add('failing');
  const key = await q.get();
  q.addRateLimited(key!);
  q.done(key!);
  q.addAfter('later', 60_000);
  t.is(q.length, 0, 'both wait on timers');
  t.deepEqual(q.retryNow(), ['failing']);
  t.is(await q.get(), 'failing');
  q.done('failing');
  t.is(q.addRateLimited('failing'), 60_000, 'the backoff starts again from the base');
  t.is(q.length, 0, "'later' still waits");
});

test('interrupt wakes idle workers without shutting the queue down', async (t) => {
  const q = new WorkQueue();
  const waiting = q.get();
  q.interrupt();
  t.is(await waiting, undefined);
  q.add('after');
  t.is(await q.get(), 'after', 'keys added later are still served');
});
