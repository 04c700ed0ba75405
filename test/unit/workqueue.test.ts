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
