// Synthetic proxy-model inputs for the applier benchmarks: N selectorless Services x 10
// endpoints. Version v > 0 replaces the first endpoint of Service 0 (a one-Service change).
import { buildProxyModel, ModelCache, type ProxyModel, type ServiceInput, type SliceInput } from '../src/agent/model.ts';

export const ENDPOINTS = 10;

export function syntheticInputs(count: number, version: number): { services: ServiceInput[]; slices: SliceInput[] } {
  const services: ServiceInput[] = [];
  const slices: SliceInput[] = [];
  for (let i = 0; i < count; i++) {
    const name = `svc-${i}`;
    const changed = i === 0 ? version : 0;
    services.push({ metadata: { name, namespace: 'bench', resourceVersion: `s${i}` } as ServiceInput['metadata'], spec: { clusterIP: `10.${96 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}`, ports: [{ name: 'http', port: 80, protocol: 'TCP' }] } });
    slices.push({
      metadata: { name: `${name}-1`, namespace: 'bench', labels: { 'kubernetes.io/service-name': name }, resourceVersion: `e${i}-${changed}` } as SliceInput['metadata'],
      addressType: 'IPv4',
      ports: [{ name: 'http', port: 8080, protocol: 'TCP' }],
      endpoints: Array.from({ length: ENDPOINTS }, (_, e) => {
        const n = i * ENDPOINTS + e + (e === 0 ? changed * 7919 : 0);
        return { addresses: [`198.18.${Math.floor(n / 250) % 256}.${(n % 250) + 1}`], conditions: { ready: true } };
      }),
    });
  }
  return { services, slices };
}

/**
 * A model builder over one cache, as the agent keeps it between syncs. Like informer
 * caches, unchanged Services and slices are the same objects from version to version.
 * `buildMs` is the model build alone.
 */
export function syntheticModels(count: number): (version: number) => ProxyModel & { buildMs: number } {
  const cache = new ModelCache();
  const base = syntheticInputs(count, 0);
  return (version) => {
    const slices = [...base.slices];
    if (version && count) slices[0] = syntheticInputs(1, version).slices[0]!;
    const t = performance.now();
    const model = buildProxyModel(base.services, slices, { name: 'bench', labels: {}, nodePortAddresses: [] }, { externalIPAllowed: () => false }, cache);
    return { ...model, buildMs: performance.now() - t };
  };
}
