// A thin JSON client for the Kubernetes API over one pooled undici Agent.
// client-node's generated clients build a new connection pool per request and
// convert every object through a serializer (measured: 122 creates/s over 1 connection
// here vs 38 creates/s over 1000 with client-node); at thousands of objects that costs
// more than the work itself. Authentication and TLS still come from client-node's
// KubeConfig, so kubeconfig files, in-cluster tokens and exec plugins all work.
import { createInterface } from 'node:readline';
import * as k8s from '@kubernetes/client-node';
import { Agent, request, type Dispatcher } from 'undici';
import { TokenBucket } from './rate-limiter.ts';

export interface ApiStatus {
  kind?: string;
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { causes?: { message?: string; field?: string }[] };
}

export class ApiError extends Error {
  readonly code: number;
  readonly reason: string;
  readonly status: ApiStatus;
  constructor(code: number, status: ApiStatus, what: string) {
    super(`${what}: ${status.message ?? status.reason ?? `HTTP ${code}`}`);
    this.code = code;
    this.reason = status.reason ?? '';
    this.status = status;
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof ApiError && err.code === 404;
}

/**
 * The API server refused the object itself (422 Invalid, 400 BadRequest): sending it
 * again cannot help, the spec that produced it must change.
 */
export function isRejected(err: unknown): err is ApiError {
  return err instanceof ApiError && (err.code === 422 || err.code === 400);
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export interface ObjectList<T> {
  metadata: { resourceVersion: string; continue?: string };
  items: T[];
}

export type Query = Record<string, string | number | boolean | undefined>;
export type PatchType = 'apply' | 'merge' | 'strategic' | 'json';

const PATCH_CONTENT_TYPES: Record<PatchType, string> = {
  apply: 'application/apply-patch+yaml',
  merge: 'application/merge-patch+json',
  strategic: 'application/strategic-merge-patch+json',
  json: 'application/json-patch+json',
};

/** Called for every request that changes something, for metrics and tests. */
export type WriteObserver = (verb: string, resource: string, path: string) => void;

/** The resource (plural, plus subresource) a request path addresses: "services", "externalbackends/status". */
export function resourceOfPath(path: string): string {
  const parts = path.split('?')[0]!.split('/').filter(Boolean);
  // /api/v1[/namespaces/ns]/plural[/name[/sub]] or /apis/group/version[/namespaces/ns]/plural[/name[/sub]]
  let rest = parts[0] === 'api' ? parts.slice(2) : parts.slice(3);
  if (rest[0] === 'namespaces' && rest.length > 2) rest = rest.slice(2);
  return rest.length >= 3 ? `${rest[0]}/${rest[2]}` : (rest[0] ?? '');
}

export interface ResourceRef {
  group: string; // '' for core
  version: string;
  plural: string;
  namespace?: string;
  name?: string;
  subresource?: string;
}

export function resourcePath(r: ResourceRef): string {
  const base = r.group ? `/apis/${r.group}/${r.version}` : `/api/${r.version}`;
  const ns = r.namespace ? `/namespaces/${encodeURIComponent(r.namespace)}` : '';
  const name = r.name ? `/${encodeURIComponent(r.name)}` : '';
  const sub = r.subresource ? `/${r.subresource}` : '';
  return `${base}${ns}/${r.plural}${name}${sub}`;
}

const HEADER_REFRESH_MS = 30_000;

export interface ClientOptions {
  connections?: number;
  /** Client-side rate limit: requests per second after a burst (client-go's QPS). */
  qps?: number;
  /** Requests that may go at once before the qps limit applies (client-go's Burst). */
  burst?: number;
  /** Longest wait for an answer to one request (a watch: for its response headers). */
  timeoutMs?: number;
}

/**
 * client-go defaults to 5 qps / 10 burst, controller-runtime's manager to 20 / 30;
 * both were set for controllers that write one object per reconcile. A resync of 1000
 * backends costs about three requests each (Service, slice, status), so 50 / 100 lets
 * that finish in about a minute while still bounding what one operator can do to the
 * API server. A request that gets no answer in 30 s is given up and retried.
 */
export const CLIENT_DEFAULTS = { connections: 16, qps: 50, burst: 100, timeoutMs: 30_000 };

export interface RequestOptions {
  query?: Query;
  body?: unknown;
  contentType?: string;
  signal?: AbortSignal;
  /** Overrides the client's timeout for this request. */
  timeoutMs?: number;
  /** Skips the rate limit: lease renewals must not queue behind a burst of writes. */
  urgent?: boolean;
}

/**
 * Whether the API server answers. A request that gets no answer, a 5xx or a 429 marks it
 * failing; the first real answer after that tells every listener, so work that backed
 * off during an outage can go again at once instead of sleeping out its backoff.
 */
class ApiReachability {
  private failing = false;
  private readonly listeners: (() => void)[] = [];
  onRecovered(listener: () => void): void {
    this.listeners.push(listener);
  }
  failed(): void {
    this.failing = true;
  }
  answered(): void {
    if (!this.failing) return;
    this.failing = false;
    for (const l of this.listeners) {
      try {
        l();
      } catch {
        // a listener's failure is its own; the others still run
      }
    }
  }
}

const answeredFine = (status: number): boolean => status < 500 && status !== 429;

/** What the clients made by withSignal share with the one they came from. */
interface SharedState {
  kc: k8s.KubeConfig;
  dispatcher: Dispatcher;
  observers: WriteObserver[];
  limiter: TokenBucket;
  reachability: ApiReachability;
  timeoutMs: number;
}

export class KubeClient {
  readonly server: string;
  private readonly shared: SharedState;
  private readonly kc: k8s.KubeConfig;
  private readonly dispatcher: Dispatcher;
  private readonly fence: AbortSignal | undefined;
  private headers: Record<string, string> = {};
  private headersAt = 0;

  private constructor(shared: SharedState, server: string, fence?: AbortSignal) {
    this.shared = shared;
    this.kc = shared.kc;
    this.server = server.replace(/\/$/, '');
    this.dispatcher = shared.dispatcher;
    this.fence = fence;
  }

  /**
   * The same client, whose every request is also cut off when `fence` aborts: a leader
   * writes through one of these per term, so losing the lease cancels its writes in flight.
   */
  withSignal(fence: AbortSignal): KubeClient {
    return new KubeClient(this.shared, this.server, this.fence ? AbortSignal.any([this.fence, fence]) : fence);
  }

  /** Called when the API server answers again after requests failed. */
  onRecovered(listener: () => void): void {
    this.shared.reachability.onRecovered(listener);
  }

  static async fromKubeConfig(kc: k8s.KubeConfig, clientOptions: ClientOptions = {}): Promise<KubeClient> {
    const options = { ...CLIENT_DEFAULTS, ...clientOptions };
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    const opts: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized?: boolean; servername?: string } = {};
    await kc.applyToHTTPSOptions(opts);
    const dispatcher = new Agent({
      connections: options.connections,
      keepAliveTimeout: 30_000,
      connect: {
        ca: opts.ca,
        cert: opts.cert,
        key: opts.key,
        ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
        ...(opts.servername ? { servername: opts.servername } : {}),
      },
    });
    const shared: SharedState = {
      kc,
      dispatcher,
      observers: [],
      limiter: new TokenBucket(options.qps, options.burst),
      reachability: new ApiReachability(),
      timeoutMs: options.timeoutMs,
    };
    return new KubeClient(shared, cluster.server);
  }

  /** Loads --kubeconfig, else $KUBECONFIG, else the in-cluster service account. */
  static async fromEnvironment(kubeconfigPath?: string, options: ClientOptions = {}): Promise<KubeClient> {
    return KubeClient.fromKubeConfig(loadKubeConfig(kubeconfigPath), options);
  }

  onWrite(observer: WriteObserver): void {
    this.shared.observers.push(observer);
  }

  async close(): Promise<void> {
    await this.dispatcher.close();
  }

  private async authHeaders(): Promise<Record<string, string>> {
    // Tokens rotate (projected service-account tokens, exec plugins): refresh now and then.
    if (Date.now() - this.headersAt > HEADER_REFRESH_MS) {
      const opts: { headers?: Record<string, string> } = { headers: {} };
      await this.kc.applyToHTTPSOptions(opts);
      const user = this.kc.getCurrentUser();
      const headers = { ...(opts.headers ?? {}) };
      if (user?.username) headers.Authorization = `Basic ${Buffer.from(`${user.username}:${user.password ?? ''}`).toString('base64')}`;
      this.headers = headers;
      this.headersAt = Date.now();
    }
    return this.headers;
  }

  private url(path: string, query?: Query): string {
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) params.set(k, String(v));
    const qs = params.toString();
    return `${this.server}${path}${qs ? `?${qs}` : ''}`;
  }

  async request<T>(method: Dispatcher.HttpMethod, path: string, options: RequestOptions = {}): Promise<T> {
    const timeoutMs = options.timeoutMs ?? this.shared.timeoutMs;
    const timeout = AbortSignal.timeout(timeoutMs);
    const signal = AbortSignal.any([timeout, ...(options.signal ? [options.signal] : []), ...(this.fence ? [this.fence] : [])]);
    const headers: Record<string, string> = { ...(await this.authHeaders()), accept: 'application/json' };
    let body: string | undefined;
    if (options.body !== undefined) {
      body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
      headers['content-type'] = options.contentType ?? 'application/json';
    }
    if (!options.urgent) await this.shared.limiter.take(signal);
    if (method !== 'GET') for (const o of this.shared.observers) o(method, resourceOfPath(path), path);
    let status: number;
    let text: string;
    try {
      const res = await request(this.url(path, options.query), { method, headers, body, dispatcher: this.dispatcher, signal });
      status = res.statusCode;
      text = await res.body.text();
    } catch (err) {
      if (!this.fence?.aborted && !options.signal?.aborted) this.shared.reachability.failed();
      if (timeout.aborted) throw new Error(`${method} ${path}: no answer from the API server within ${timeoutMs / 1000} s`, { cause: err });
      throw err;
    }
    if (answeredFine(status)) this.shared.reachability.answered();
    else this.shared.reachability.failed();
    const parsed: unknown = text ? JSON.parse(text) : undefined;
    if (status >= 400) throw new ApiError(status, (parsed ?? {}), `${method} ${path}`);
    return parsed as T;
  }

  get<T>(path: string, query?: Query, options: Omit<RequestOptions, 'query'> = {}): Promise<T> {
    return this.request<T>('GET', path, { ...options, query });
  }

  /**
   * Lists every page. Items get apiVersion and kind, which list responses leave out;
   * `keep` maps each item as its page arrives, so only what it keeps outlives the page.
   */
  async list<T>(path: string, query: Query = {}, keep: (item: T) => T = (item) => item): Promise<ObjectList<T>> {
    const items: T[] = [];
    let cont: string | undefined;
    let resourceVersion = '';
    do {
      const page = await this.get<ObjectList<T> & { apiVersion?: string; kind?: string }>(path, { limit: 500, ...query, continue: cont });
      const typeMeta = { apiVersion: page.apiVersion, kind: page.kind?.replace(/List$/, '') };
      for (const item of page.items ?? []) items.push(keep({ ...typeMeta, ...item }));
      resourceVersion = page.metadata.resourceVersion;
      cont = page.metadata.continue || undefined;
    } while (cont);
    return { metadata: { resourceVersion }, items };
  }

  create<T>(path: string, body: unknown): Promise<T> {
    return this.request<T>('POST', path, { body });
  }

  /** Server-side apply: `obj` is our whole intent for the fields we manage. */
  apply<T>(path: string, obj: unknown, fieldManager: string, force = true): Promise<T> {
    return this.request<T>('PATCH', path, { body: obj, contentType: PATCH_CONTENT_TYPES.apply, query: { fieldManager, force } });
  }

  patch<T>(path: string, body: unknown, type: PatchType, query?: Query): Promise<T> {
    return this.request<T>('PATCH', path, { body, contentType: PATCH_CONTENT_TYPES[type], query });
  }

  delete(path: string, query?: Query, body?: unknown): Promise<unknown> {
    return this.request('DELETE', path, { query, body });
  }

  /**
   * A watch stream. Ends when the server closes it (timeoutSeconds) or on error;
   * a 410 Gone arrives as an ERROR event whose object is a Status with code 410.
   */
  async *watch<T>(path: string, query: Query, signal: AbortSignal): AsyncGenerator<WatchEvent<T>> {
    const headers = { ...(await this.authHeaders()), accept: 'application/json' };
    await this.shared.limiter.take(signal);
    // The timeout covers the wait for the response headers; the stream itself lasts until
    // the server's timeoutSeconds ends it.
    const connecting = new AbortController();
    const timer = setTimeout(() => connecting.abort(new Error(`WATCH ${path}: no answer from the API server within ${this.shared.timeoutMs / 1000} s`)), this.shared.timeoutMs);
    let res: Dispatcher.ResponseData;
    try {
      res = await request(this.url(path, { ...query, watch: true }), { method: 'GET', headers, dispatcher: this.dispatcher, signal: AbortSignal.any([signal, connecting.signal]), bodyTimeout: 0 });
    } catch (err) {
      if (!signal.aborted) this.shared.reachability.failed();
      throw connecting.signal.aborted ? (connecting.signal.reason as Error) : err;
    } finally {
      clearTimeout(timer);
    }
    if (answeredFine(res.statusCode)) this.shared.reachability.answered();
    else this.shared.reachability.failed();
    if (res.statusCode >= 400) {
      const text = await res.body.text();
      throw new ApiError(res.statusCode, (text ? JSON.parse(text) : {}) as ApiStatus, `WATCH ${path}`);
    }
    const lines = createInterface({ input: res.body, crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        if (line) yield JSON.parse(line) as WatchEvent<T>;
      }
    } finally {
      lines.close();
      res.body.destroy();
    }
  }
}

export function loadKubeConfig(kubeconfigPath?: string): k8s.KubeConfig {
  const kc = new k8s.KubeConfig();
  const file = kubeconfigPath ?? process.env.KUBECONFIG;
  if (file) kc.loadFromFile(file.split(':')[0]!);
  else kc.loadFromCluster();
  return kc;
}
