// Runs a sync function no more often than minIntervalMs and at least every
// maxIntervalMs (kube-proxy's BoundedFrequencyRunner): bursts of changes collapse into
// one sync; a failed sync is retried with backoff; a queued change remembers when it
// was first requested, for /livez.

export interface SyncRunnerOptions {
  minIntervalMs: number;
  maxIntervalMs: number;
  /** `full` is true for the periodic resync and after a failure. */
  sync: (full: boolean) => Promise<void>;
  onError: (err: Error, retryInMs: number) => void;
}

export class SyncRunner {
  private readonly o: SyncRunnerOptions;
  private timer: NodeJS.Timeout | undefined;
  private running = false;
  private pending = false;
  private needFull = true;
  private lastRun = 0;
  private lastFull = 0;
  private failures = 0;
  private stopped = false;
  private started = false;
  /** When the oldest unapplied change was requested (undefined when none waits). */
  pendingSince: number | undefined;
  lastSuccess: number | undefined;

  constructor(options: SyncRunnerOptions) {
    this.o = options;
  }

  /** Nothing runs before this: requests made earlier (informers filling their caches) only mark work as pending. */
  start(): void {
    this.started = true;
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  /** Something changed: sync soon (within minInterval of the last sync). */
  request(): void {
    this.pendingSince ??= Date.now();
    this.pending = true;
    if (this.started && !this.running) this.schedule(Math.max(0, this.lastRun + this.o.minIntervalMs - Date.now()));
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.run(), delayMs);
  }

  private async run(): Promise<void> {
    if (this.running || this.stopped) return;
    this.running = true;
    this.pending = false;
    const requestedAt = this.pendingSince;
    this.pendingSince = undefined;
    const full = this.needFull || Date.now() - this.lastFull >= this.o.maxIntervalMs;
    this.lastRun = Date.now();
    let next = this.o.maxIntervalMs;
    try {
      await this.o.sync(full);
      this.failures = 0;
      this.needFull = false;
      this.lastSuccess = Date.now();
      if (full) this.lastFull = Date.now();
    } catch (err) {
      this.failures++;
      this.needFull = true;
      this.pendingSince ??= requestedAt ?? Date.now();
      next = Math.min(this.o.maxIntervalMs, this.o.minIntervalMs * 2 ** this.failures);
      this.o.onError(err as Error, next);
    } finally {
      this.running = false;
    }
    if (this.pending) next = Math.min(next, Math.max(0, this.lastRun + this.o.minIntervalMs - Date.now()));
    this.schedule(next);
  }
}

/**
 * kube-proxy's /healthz rule: unhealthy until the first sync succeeded, and while a
 * change has waited longer than `limitMs` (two sync periods) to reach the kernel; the
 * reason, or undefined when healthy.
 */
export function proxyHealth(state: { lastSuccess?: number | undefined; pendingSince?: number | undefined }, now: number, limitMs: number): string | undefined {
  if (state.lastSuccess === undefined) return 'not synced yet';
  if (state.pendingSince !== undefined && now - state.pendingSince > limitMs) return `a change has waited ${Math.round((now - state.pendingSince) / 1000)} s`;
  return undefined;
}
