// Turns spec addresses into publishable IPs: DNS names resolved (A and AAAA) and
// cached for min(TTL, refresh period); every answer re-checked against the address
// policy each time, so a name that starts pointing at loopback or into the cluster
// is refused then and there.
import { promises as dns, type RecordWithTtl } from 'node:dns';
import { canonicalIP } from '../net/ip.ts';
import { POLICY_REASON, refuseAddress, type AddressPolicy, type PolicyRefusal } from './address-policy.ts';
import type { ResolvedAddress } from './desired.ts';
import type { BackendAddress } from '../api/external-backend.ts';

export interface DnsAnswer {
  addresses: string[];
  ttlSeconds: number;
}

export type DnsLookup = (hostname: string) => Promise<DnsAnswer>;

/** A/AAAA lookup through the given servers (or the system's), with TTLs. */
export function dnsLookup(servers?: string[], timeoutMs = 2000): DnsLookup {
  const resolver = new dns.Resolver({ timeout: timeoutMs, tries: 2 });
  if (servers?.length) resolver.setServers(servers);
  return async (hostname) => {
    const name = hostname.replace(/\.$/, '');
    const settle = async (p: Promise<RecordWithTtl[]>): Promise<RecordWithTtl[] | Error> => p.catch((e: Error) => e);
    const [v4, v6] = await Promise.all([settle(resolver.resolve4(name, { ttl: true })), settle(resolver.resolve6(name, { ttl: true }))]);
    const records = [...(Array.isArray(v4) ? v4 : []), ...(Array.isArray(v6) ? v6 : [])];
    if (!records.length) {
      const err = [v4, v6].find((r): r is Error => r instanceof Error && (r as NodeJS.ErrnoException).code !== 'ENODATA');
      throw new Error(err ? `DNS lookup of ${name} failed: ${(err as NodeJS.ErrnoException).code ?? err.message}` : `${name} has no A or AAAA records`);
    }
    return { addresses: records.map((r) => r.address), ttlSeconds: Math.min(...records.map((r) => r.ttl)) };
  };
}

interface CacheEntry {
  addresses: string[];
  expiresAt: number;
  error?: string;
}

/**
 * The namespace's ExternalBackendPolicies for one address: with `ip` undefined, the
 * address as written (its name and ports, before any lookup); else one of its IPs.
 */
export type PolicyCheck = (address: BackendAddress, ip?: string) => PolicyRefusal | undefined;

export const NO_POLICY: PolicyCheck = () => undefined;

export interface ResolveResult {
  resolved: ResolvedAddress[];
  /** When a hostname's answer should be looked at again. */
  refreshAfterMs?: number;
}

export class AddressResolver {
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<CacheEntry>>();
  private readonly lookup: DnsLookup;
  private readonly refreshMs: number;
  private readonly minRefreshMs: number;

  constructor(lookup: DnsLookup, refreshMs = 30_000, minRefreshMs = 2_000) {
    this.lookup = lookup;
    this.refreshMs = refreshMs;
    this.minRefreshMs = minRefreshMs;
  }

  private async entry(hostname: string): Promise<CacheEntry> {
    const cached = this.cache.get(hostname);
    if (cached && cached.expiresAt > Date.now()) return cached;
    let pending = this.inflight.get(hostname);
    if (!pending) {
      pending = this.lookup(hostname)
        .then((answer): CacheEntry => {
          const ttlMs = Math.max(this.minRefreshMs, Math.min(this.refreshMs, answer.ttlSeconds * 1000));
          return { addresses: answer.addresses, expiresAt: Date.now() + ttlMs };
        })
        .catch((err: Error): CacheEntry => {
          // Keep serving the last good answer through a DNS outage, but say so.
          const last = this.cache.get(hostname);
          return { addresses: last?.error ? [] : (last?.addresses ?? []), expiresAt: Date.now() + this.minRefreshMs * 2, error: err.message };
        })
        .then((e) => {
          this.cache.set(hostname, e);
          this.inflight.delete(hostname);
          return e;
        });
      this.inflight.set(hostname, pending);
    }
    return pending;
  }

  async resolve(addresses: BackendAddress[], policy: AddressPolicy, byPolicy: PolicyCheck = NO_POLICY): Promise<ResolveResult> {
    let refreshAt: number | undefined;
    // The built-in refusals first (their reason names the danger), then the admins' policies.
    const refuse = (spec: BackendAddress, ip: string): { message: string; policy?: string } | undefined => {
      const why = refuseAddress(ip, policy);
      return why ? { message: why } : byPolicy(spec, ip);
    };
    const reasonFor = (refused: { policy?: string }[]): string => (refused.some((r) => r.policy) ? POLICY_REASON : 'AddressRefused');
    const resolved = await Promise.all(
      addresses.map(async (spec): Promise<ResolvedAddress> => {
        const key = spec.ip ?? spec.hostname!;
        // A name or port the policy refuses is not even looked up.
        const asWritten = byPolicy(spec);
        if (asWritten) return { spec, key, ips: [], problem: { reason: POLICY_REASON, message: asWritten.message } };
        if (spec.ip) {
          const ip = canonicalIP(spec.ip) ?? spec.ip;
          const why = refuse(spec, ip);
          return why ? { spec, key, ips: [], problem: { reason: reasonFor([why]), message: why.message }, refused: [{ ip, ...why }] } : { spec, key, ips: [ip] };
        }
        const hostname = spec.hostname!;
        const e = await this.entry(hostname);
        refreshAt = Math.min(refreshAt ?? Infinity, e.expiresAt);
        const ips: string[] = [];
        const refused: { ip: string; message: string; policy?: string }[] = [];
        for (const raw of e.addresses) {
          const ip = canonicalIP(raw) ?? raw;
          const why = refuse(spec, ip);
          if (why) refused.push({ ip, ...why });
          else if (!ips.includes(ip)) ips.push(ip);
        }
        if (!ips.length) {
          const message = e.error ?? `every address ${hostname} resolves to was refused: ${refused.map((r) => r.message).join('; ')}`;
          return { spec, key, ips, problem: { reason: e.error ? 'ResolveFailed' : reasonFor(refused), message }, ...(refused.length ? { refused } : {}) };
        }
        return { spec, key, ips, ...(refused.length ? { refused } : {}) };
      }),
    );
    return { resolved, ...(refreshAt !== undefined ? { refreshAfterMs: Math.max(this.minRefreshMs, refreshAt - Date.now()) } : {}) };
  }
}
