// The controller loop: informers only enqueue keys; N workers take keys from the queue
// and call a level-triggered reconcile that reads from the caches. A thrown error
// means "retry with backoff"; a requeueAfter means "look again later".
import type { Logger } from '../log.ts';
import type { HasMetadata, Informer } from './informer.ts';
import type { Registry } from './metrics.ts';
import { WorkQueue } from './workqueue.ts';

export interface ReconcileResult {
  requeueAfterMs?: number;
}

export type Reconciler = (key: string) => Promise<ReconcileResult | void>;

export interface ControllerOptions {
  name: string;
  reconcile: Reconciler;
  workers: number;
  log: Logger;
  metrics: Registry;
}

export class Controller {
  readonly queue = new WorkQueue();
  private readonly options: ControllerOptions;
  private readonly informers: Informer<HasMetadata>[] = [];
  private readonly keysOf: (() => string[])[] = [];
  private workers: Promise<void>[] = [];
  private started = false;
  private readonly reconciles;
  private readonly errors;
  private readonly duration;

  constructor(options: ControllerOptions) {
    this.options = options;
    const m = options.metrics;
    this.reconciles = m.counter('extbackend_reconcile_total', 'Reconciles by controller and result.', ['controller', 'result']);
    this.errors = m.counter('extbackend_reconcile_errors_total', 'Reconciles that failed and were retried with backoff.', ['controller']);
    this.duration = m.histogram('extbackend_reconcile_duration_seconds', 'Time spent in one reconcile.', ['controller']);
    m.callbackGauge('extbackend_workqueue_depth', 'Keys waiting in the work queue.', () => this.queue.length, { controller: options.name });
    m.callbackGauge('extbackend_workqueue_active', 'Keys being reconciled now.', () => this.queue.active, { controller: options.name });
  }

  /** Enqueues the keys `toKeys` maps each changed object to. */
  watch<T extends HasMetadata>(informer: Informer<T>, toKeys: (obj: T) => string[]): void {
    this.informers.push(informer as unknown as Informer<HasMetadata>);
    this.keysOf.push(() => informer.list().flatMap(toKeys));
    informer.on((_event, obj, old) => {
      for (const key of toKeys(obj)) this.queue.add(key);
      if (old) for (const key of toKeys(old)) this.queue.add(key);
    });
  }

  /** Starts informers, waits for their caches, then starts the workers. */
  async start(): Promise<void> {
    await this.startWorkers();
  }

  /**
   * Starts the informers (once) and workers that run until `term` aborts; every known
   * key is reconciled again, since a previous term may have ended mid-way. Resolves once
   * the workers run.
   */
  async startWorkers(term?: AbortSignal): Promise<void> {
    for (const i of this.informers) i.start();
    await Promise.all(this.informers.map((i) => i.synced));
    if (this.started) for (const key of this.keysOf.flatMap((k) => k())) this.queue.add(key);
    this.started = true;
    this.options.log.info('caches synced; starting workers', { controller: this.options.name, workers: this.options.workers });
    this.workers = Array.from({ length: this.options.workers }, () => this.work(term));
  }

  /** Ends the current workers (after their reconciles in flight); queued keys wait for the next term. */
  async stopWorkers(): Promise<void> {
    this.queue.interrupt();
    await Promise.all(this.workers);
    this.workers = [];
  }

  async stop(): Promise<void> {
    this.queue.shutdown();
    await Promise.all(this.workers);
    await Promise.all(this.informers.map((i) => i.stop()));
  }

  private async work(term?: AbortSignal): Promise<void> {
    const { name, log, reconcile } = this.options;
    for (;;) {
      if (term?.aborted) return;
      const key = await this.queue.get();
      if (key === undefined) return;
      if (term?.aborted) {
        // Taken just as the term ended: hand it to the next term untouched.
        this.queue.done(key);
        this.queue.add(key);
        return;
      }
      const started = performance.now();
      try {
        const result = await reconcile(key);
        this.queue.forget(key);
        this.reconciles.inc({ controller: name, result: 'success' });
        if (result?.requeueAfterMs) this.queue.addAfter(key, result.requeueAfterMs);
      } catch (err) {
        const delay = this.queue.addRateLimited(key);
        this.reconciles.inc({ controller: name, result: 'error' });
        this.errors.inc({ controller: name });
        log.warn('reconcile failed; will retry', { key, error: (err as Error).message, retryInMs: delay });
      } finally {
        this.duration.observe({ controller: name }, (performance.now() - started) / 1000);
        this.queue.done(key);
      }
    }
  }
}
