// Client-side rate limit for API requests: a token bucket, as client-go's
// flowcontrol.NewTokenBucketRateLimiter(qps, burst). A burst of `burst` requests goes
// at once, then `qps` per second; a caller waits for its token (FIFO) or gives up
// when its signal aborts. The clock is injected for tests.

export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) =>
    new Promise((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason as Error);
      const timer = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      const onAbort = (): void => {
        clearTimeout(timer);
        reject(signal!.reason as Error);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};

export class TokenBucket {
  readonly qps: number;
  readonly burst: number;
  private readonly clock: Clock;
  private tokens: number;
  private updatedAt: number;
  /** Tokens already promised to waiters: the next waiter's token comes after theirs. */
  private reserved = 0;

  constructor(qps: number, burst: number, clock: Clock = realClock) {
    if (!(qps > 0) || !(burst >= 1)) throw new Error(`rate limit needs qps > 0 and burst >= 1 (got ${qps}, ${burst})`);
    this.qps = qps;
    this.burst = burst;
    this.clock = clock;
    this.tokens = burst;
    this.updatedAt = clock.now();
  }

  private refill(): void {
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.updatedAt) / 1000) * this.qps);
    this.updatedAt = now;
  }

  /** How long the next caller would wait, in ms (0: a token is there). */
  delayMs(): number {
    this.refill();
    const missing = this.reserved + 1 - this.tokens;
    return missing <= 0 ? 0 : (missing / this.qps) * 1000;
  }

  /** Waits for a token. */
  async take(signal?: AbortSignal): Promise<void> {
    const wait = this.delayMs();
    if (wait === 0) {
      this.tokens -= 1;
      return;
    }
    this.reserved++;
    try {
      await this.clock.sleep(wait, signal);
    } finally {
      this.reserved--;
    }
    this.refill();
    this.tokens -= 1;
  }
}
