// Per-backend gauges, computed at scrape time from the caches the operator keeps anyway
// (its ExternalBackends and its own EndpointSlices), so nothing is counted twice and a
// deleted backend's series vanish with it. Label values come from spec names only:
// namespace, backend, spec port name (or number) and spec address, which the CRD bounds
// (at most 1000 addresses and 100 ports per backend).
import { portName, type ExternalBackend } from '../api/external-backend.ts';
import { BACKEND_LABEL } from '../api/labels.ts';
import type { KubeObject } from '../runtime/kube-object.ts';
import type { Registry } from '../runtime/metrics.ts';

export type Sample = { labels: Record<string, string>; value: number };

interface SliceView {
  metadata: KubeObject['metadata'];
  ports?: { name?: string }[];
  endpoints?: { addresses: string[]; conditions?: { ready?: boolean } }[];
}

export interface BackendSamples {
  addresses: Sample[];
  readyAddresses: Sample[];
  addressReady: Sample[];
}

/**
 * Endpoints per backend and spec port as the EndpointSlices publish them (what every
 * proxy routes to), and each spec address's readiness as the status reports it. Every
 * spec port of every backend gets a series, so "no ready address" is a 0, not a gap.
 */
export function backendSamples(backends: ExternalBackend[], slices: SliceView[]): BackendSamples {
  const out: BackendSamples = { addresses: [], readyAddresses: [], addressReady: [] };
  const slicesOf = new Map<string, SliceView[]>();
  for (const s of slices) {
    const owner = s.metadata.labels?.[BACKEND_LABEL];
    if (!owner) continue;
    const key = `${s.metadata.namespace}/${owner}`;
    slicesOf.set(key, [...(slicesOf.get(key) ?? []), s]);
  }
  for (const eb of backends) {
    const namespace = eb.metadata.namespace ?? '';
    const backend = eb.metadata.name;
    const mine = slicesOf.get(`${namespace}/${backend}`) ?? [];
    for (const p of eb.spec.ports) {
      const all = new Set<string>();
      const ready = new Set<string>();
      for (const s of mine) {
        if (!(s.ports ?? []).some((sp) => (sp.name ?? '') === portName(p))) continue;
        for (const e of s.endpoints ?? []) {
          const ip = e.addresses[0];
          if (ip === undefined) continue;
          all.add(ip);
          if (e.conditions?.ready) ready.add(ip);
        }
      }
      const labels = { namespace, backend, port: p.name ?? String(p.port) };
      out.addresses.push({ labels, value: all.size });
      out.readyAddresses.push({ labels, value: ready.size });
    }
    for (const a of eb.status?.addresses ?? []) out.addressReady.push({ labels: { namespace, backend, address: a.address }, value: a.ready ? 1 : 0 });
  }
  return out;
}

/** Registers the per-backend gauges, set afresh from `read` (the caches' current contents) at every scrape. */
export function registerBackendMetrics(metrics: Registry, read: () => { backends: ExternalBackend[]; slices: SliceView[] }): void {
  const port = ['namespace', 'backend', 'port'] as const;
  const gauge = (name: string, help: string, labelNames: readonly string[], pick: (s: BackendSamples) => Sample[]) =>
    metrics.collectedGauge(name, help, labelNames, (g) => {
      const { backends, slices } = read();
      for (const s of pick(backendSamples(backends, slices))) g.set(s.labels, s.value);
    });
  gauge('extbackend_backend_addresses', 'Addresses the EndpointSlices publish for a backend port, ready or not.', port, (s) => s.addresses);
  gauge('extbackend_backend_ready_addresses', 'Ready addresses the EndpointSlices publish for a backend port.', port, (s) => s.readyAddresses);
  gauge('extbackend_backend_address_ready', '1 when a spec address of a backend is ready (its probes pass), else 0.', ['namespace', 'backend', 'address'], (s) => s.addressReady);
}
