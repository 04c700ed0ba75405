import test from 'ava';
import { TokenBucket, type Clock } from '../../src/runtime/rate-limiter.ts';

/** A clock that moves only when a caller sleeps, so the test measures waits without waiting. */
function fakeClock(): Clock & { slept: number[] } {
  let now = 0;
  const slept: number[] = [];
  return {
    slept,
    now: () => now,
    sleep: (ms) => {
      slept.push(ms);
      now += ms;
      return Promise.resolve();
    },
  };
}

test('a burst goes at once, then requests are spaced 1/qps apart', async (t) => {
  const clock = fakeClock();
  const bucket = new TokenBucket(50, 100, clock);
  for (let i = 0; i < 100; i++) await bucket.take();
  t.deepEqual(clock.slept, [], 'the first 100 (the burst) do not wait');
  for (let i = 0; i < 5; i++) await bucket.take();
  // Each further token takes 1000 ms / 50 qps = 20 ms.
  t.deepEqual(clock.slept.map((ms) => Math.round(ms)), [20, 20, 20, 20, 20]);
});

test('an idle bucket refills up to the burst, not beyond', async (t) => {
  const clock = fakeClock();
  const bucket = new TokenBucket(10, 3, clock);
  for (let i = 0; i < 3; i++) await bucket.take();
  await clock.sleep(60_000);
  clock.slept.length = 0;
  for (let i = 0; i < 4; i++) await bucket.take();
  t.deepEqual(clock.slept.map((ms) => Math.round(ms)), [100], 'three from the refilled burst, the fourth waits 1000 / 10 ms');
});

test('a waiter whose signal aborts gives up and rejects', async (t) => {
  const bucket = new TokenBucket(0.001, 1);
  await bucket.take();
  const abort = new AbortController();
  const waiting = bucket.take(abort.signal);
  abort.abort(new Error('gave up'));
  await t.throwsAsync(waiting, { message: 'gave up' });
});

test('bad limits are refused', (t) => {
  t.throws(() => new TokenBucket(0, 10), { message: /qps > 0/ });
  t.throws(() => new TokenBucket(5, 0), { message: /burst >= 1/ });
});
