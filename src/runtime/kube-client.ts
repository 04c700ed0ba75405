// A thin JSON client for the Kubernetes API over one pooled undici Agent.
// client-node's generated clients build a new connection pool per request and
// convert every object through a serializer; at thousands of objects that costs
// more than the work itself. Authentication and TLS still come from client-node's
// KubeConfig, so kubeconfig files, in-cluster tokens and exec plugins all work.
import { createInterface } from 'node:readline';
import * as k8s from '@kubernetes/client-node';
import { Agent, request, type Dispatcher } from 'undici';

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

export class KubeClient {
  readonly server: string;
  private readonly kc: k8s.KubeConfig;
  private readonly dispatcher: Dispatcher;
  private headers: Record<string, string> = {};
  private headersAt = 0;
  private readonly observers: WriteObserver[] = [];

  private constructor(kc: k8s.KubeConfig, server: string, dispatcher: Dispatcher) {
    this.kc = kc;
    this.server = server.replace(/\/$/, '');
    this.dispatcher = dispatcher;
  }

  static async fromKubeConfig(kc: k8s.KubeConfig, options: { connections?: number } = {}): Promise<KubeClient> {
    const cluster = kc.getCurrentCluster();
    if (!cluster) throw new Error('the kubeconfig has no current cluster');
    const opts: { ca?: Buffer; cert?: Buffer; key?: Buffer; rejectUnauthorized?: boolean; servername?: string } = {};
    await kc.applyToHTTPSOptions(opts);
    const dispatcher = new Agent({
      connections: options.connections ?? 16,
      keepAliveTimeout: 30_000,
      connect: {
        ca: opts.ca,
        cert: opts.cert,
        key: opts.key,
        ...(opts.rejectUnauthorized !== undefined ? { rejectUnauthorized: opts.rejectUnauthorized } : {}),
        ...(opts.servername ? { servername: opts.servername } : {}),
      },
    });
    return new KubeClient(kc, cluster.server, dispatcher);
  }

  /** Loads --kubeconfig, else $KUBECONFIG, else the in-cluster service account. */
  static async fromEnvironment(kubeconfigPath?: string): Promise<KubeClient> {
    return KubeClient.fromKubeConfig(loadKubeConfig(kubeconfigPath));
  }

  onWrite(observer: WriteObserver): void {
    this.observers.push(observer);
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

  async request<T>(method: Dispatcher.HttpMethod, path: string, options: { query?: Query; body?: unknown; contentType?: string; signal?: AbortSignal } = {}): Promise<T> {
    const headers: Record<string, string> = { ...(await this.authHeaders()), accept: 'application/json' };
    let body: string | undefined;
    if (options.body !== undefined) {
      body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
      headers['content-type'] = options.contentType ?? 'application/json';
    }
    if (method !== 'GET') for (const o of this.observers) o(method, resourceOfPath(path), path);
    const res = await request(this.url(path, options.query), { method, headers, body, dispatcher: this.dispatcher, signal: options.signal });
    const text = await res.body.text();
    const parsed: unknown = text ? JSON.parse(text) : undefined;
    if (res.statusCode >= 400) throw new ApiError(res.statusCode, (parsed ?? {}), `${method} ${path}`);
    return parsed as T;
  }

  get<T>(path: string, query?: Query): Promise<T> {
    return this.request<T>('GET', path, { query });
  }

  /** Lists every page. Items get apiVersion and kind, which list responses leave out. */
  async list<T>(path: string, query: Query = {}): Promise<ObjectList<T>> {
    const items: T[] = [];
    let cont: string | undefined;
    let resourceVersion = '';
    do {
      const page = await this.get<ObjectList<T> & { apiVersion?: string; kind?: string }>(path, { limit: 500, ...query, continue: cont });
      const typeMeta = { apiVersion: page.apiVersion, kind: page.kind?.replace(/List$/, '') };
      for (const item of page.items ?? []) items.push({ ...typeMeta, ...item });
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
    const res = await request(this.url(path, { ...query, watch: true }), { method: 'GET', headers, dispatcher: this.dispatcher, signal, bodyTimeout: 0 });
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
