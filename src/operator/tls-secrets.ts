// TLS material for probes from a Secret in the backend's namespace (ca.crt, tls.crt,
// tls.key), read on demand and cached briefly so probes of many backends sharing a
// Secret do not each read it, while a rotated certificate is picked up within a minute.
import { isNotFound, resourcePath, type KubeClient } from '../runtime/kube-client.ts';
import type { TlsMaterial } from '../probes/probe.ts';

const TTL_MS = 60_000;

export class TlsSecrets {
  private readonly cache = new Map<string, { at: number; value: Record<string, string> | undefined }>();
  private readonly client: KubeClient;
  constructor(client: KubeClient) {
    this.client = client;
  }

  private async data(namespace: string, name: string): Promise<Record<string, string> | undefined> {
    const key = `${namespace}/${name}`;
    const hit = this.cache.get(key);
    if (hit && Date.now() - hit.at < TTL_MS) return hit.value;
    let value: Record<string, string> | undefined;
    try {
      const secret = await this.client.get<{ data?: Record<string, string> }>(resourcePath({ group: '', version: 'v1', plural: 'secrets', namespace, name }));
      value = Object.fromEntries(Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
    } catch (err) {
      if (!isNotFound(err)) throw err;
    }
    this.cache.set(key, { at: Date.now(), value });
    return value;
  }

  /** The probe's TLS settings, or a problem in plain words. */
  async material(namespace: string, tls: { serverName?: string; insecureSkipVerify?: boolean; secretName?: string } | undefined): Promise<{ tls?: TlsMaterial; problem?: string }> {
    if (!tls) return {};
    const base: TlsMaterial = { ...(tls.serverName ? { serverName: tls.serverName } : {}), ...(tls.insecureSkipVerify ? { insecureSkipVerify: true } : {}) };
    if (!tls.secretName) return { tls: base };
    const data = await this.data(namespace, tls.secretName);
    if (!data) return { tls: base, problem: `healthCheck.tls.secretName: Secret ${namespace}/${tls.secretName} not found` };
    if (!!data['tls.crt'] !== !!data['tls.key']) return { tls: base, problem: `Secret ${namespace}/${tls.secretName} needs both tls.crt and tls.key for a client certificate` };
    return {
      tls: { ...base, ...(data['ca.crt'] ? { ca: data['ca.crt'] } : {}), ...(data['tls.crt'] ? { cert: data['tls.crt'], key: data['tls.key'] } : {}) },
    };
  }
}
