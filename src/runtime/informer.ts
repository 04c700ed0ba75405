// List-then-watch cache of one resource, as client-go's reflector does it: relist only
// when the watch's resourceVersion is too old (410), otherwise resume the watch from
// the last seen version, so a reconnect does not replay every object. On errors it
// retries with backoff and keeps serving the last known objects meanwhile.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../log.ts';
import type { ObjectMeta } from './kube-object.ts';

export interface HasMetadata {
  metadata: ObjectMeta;
}
import { ApiError, type KubeClient, type WatchEvent } from './kube-client.ts';

export type InformerEvent = 'add' | 'update' | 'delete';
export type InformerHandler<T> = (event: InformerEvent, obj: T, old?: T) => void;

export interface InformerOptions {
  client: KubeClient;
  /** Collection path, e.g. /api/v1/services or /apis/extbackend.io/v1alpha1/namespaces/x/externalbackends */
  path: string;
  labelSelector?: string;
  fieldSelector?: string;
  log: Logger;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
}

/** What the cache keeps of each object, as client-go's SetTransform: the fields a consumer reads, not the whole object. */
export type InformerTransform<T> = (obj: T) => T;

export function objectKey(obj: { metadata: { name: string; namespace?: string } }): string {
  return obj.metadata.namespace ? `${obj.metadata.namespace}/${obj.metadata.name}` : obj.metadata.name;
}

export class Informer<T extends HasMetadata> {
  private readonly cache = new Map<string, T>();
  private readonly transform: InformerTransform<T>;
  private readonly handlers: InformerHandler<T>[] = [];
  private readonly options: InformerOptions;
  private readonly abort = new AbortController();
  private resourceVersion: string | undefined;
  private running: Promise<void> | undefined;
  private markSynced!: () => void;
  /** Resolves once the first list is in the cache. */
  readonly synced: Promise<void>;
  hasSynced = false;

  constructor(options: InformerOptions, transform: InformerTransform<T> = (obj) => obj) {
    this.options = options;
    this.transform = transform;
    this.synced = new Promise((resolve) => (this.markSynced = resolve));
  }

  on(handler: InformerHandler<T>): void {
    this.handlers.push(handler);
  }

  get(key: string): T | undefined {
    return this.cache.get(key);
  }

  list(): T[] {
    return [...this.cache.values()];
  }

  /**
   * Puts an object we just wrote into the cache, so a reconcile that runs before the
   * watch delivers it does not act on the old version (and write again).
   */
  assume(obj: T): void {
    this.cache.set(objectKey(obj), obj);
  }

  /** Drops an object we just deleted, for the same reason. */
  assumeDeleted(key: string): void {
    this.cache.delete(key);
  }

  get size(): number {
    return this.cache.size;
  }

  start(): void {
    this.running ??= this.loop();
  }

  async stop(): Promise<void> {
    this.abort.abort();
    await this.running;
  }

  private emit(event: InformerEvent, obj: T, old?: T): void {
    for (const h of this.handlers) {
      try {
        h(event, obj, old);
      } catch (err) {
        this.options.log.error('informer handler failed', { path: this.options.path, error: (err as Error).message });
      }
    }
  }

  /** Replaces the cache with a fresh list (already transformed), emitting only real differences. */
  private replace(items: T[]): void {
    const fresh = new Map(items.map((o) => [objectKey(o), o]));
    for (const [key, old] of this.cache) {
      if (!fresh.has(key)) {
        this.cache.delete(key);
        this.emit('delete', old);
      }
    }
    for (const [key, obj] of fresh) {
      const old = this.cache.get(key);
      this.cache.set(key, obj);
      if (!old) this.emit('add', obj);
      else if (old.metadata.resourceVersion !== obj.metadata.resourceVersion) this.emit('update', obj, old);
    }
  }

  private apply(ev: WatchEvent<T>): void {
    const obj = this.transform(ev.object);
    const key = objectKey(obj);
    const old = this.cache.get(key);
    if (ev.type === 'DELETED') {
      this.cache.delete(key);
      this.emit('delete', obj);
    } else {
      this.cache.set(key, obj);
      this.emit(old ? 'update' : 'add', obj, old);
    }
  }

  private selectors(): Record<string, string | undefined> {
    return { labelSelector: this.options.labelSelector, fieldSelector: this.options.fieldSelector };
  }

  private async loop(): Promise<void> {
    const { client, path, log } = this.options;
    const initial = this.options.initialBackoffMs ?? 500;
    // client-go's reflector backs off to 30 s; one list or watch request per informer every
    // 5 s at most costs the API server little and resumes within 5 s of its return.
    const max = this.options.maxBackoffMs ?? 5_000;
    let backoff = initial;
    const signal = this.abort.signal;
    while (!signal.aborted) {
      try {
        if (this.resourceVersion === undefined) {
          const list = await client.list<T>(path, this.selectors(), this.transform);
          this.replace(list.items);
          this.resourceVersion = list.metadata.resourceVersion;
          backoff = initial;
          if (!this.hasSynced) {
            this.hasSynced = true;
            this.markSynced();
          }
        }
        // Server-side timeout with jitter so many watches do not all reconnect at once.
        const timeoutSeconds = 240 + Math.floor(Math.random() * 120);
        const query = { ...this.selectors(), resourceVersion: this.resourceVersion, allowWatchBookmarks: true, timeoutSeconds };
        for await (const ev of client.watch<T>(path, query, signal)) {
          if (ev.type === 'ERROR') {
            const status = ev.object as unknown as { code?: number; message?: string };
            if (status.code === 410) {
              log.debug('watch resourceVersion expired; relisting', { path });
              this.resourceVersion = undefined;
              break;
            }
            throw new Error(`watch error: ${status.message ?? JSON.stringify(status)}`);
          }
          if (ev.type !== 'BOOKMARK') this.apply(ev);
          this.resourceVersion = ev.object.metadata.resourceVersion ?? this.resourceVersion;
          backoff = initial;
        }
      } catch (err) {
        if (signal.aborted) break;
        if (err instanceof ApiError && err.code === 410) this.resourceVersion = undefined;
        log.warn('list/watch failed; retrying with backoff (cache kept)', { path, error: (err as Error).message, retryInMs: backoff });
        await sleep(backoff * (0.8 + Math.random() * 0.4), undefined, { signal }).catch(() => undefined);
        backoff = Math.min(max, backoff * 2);
      }
    }
  }
}
