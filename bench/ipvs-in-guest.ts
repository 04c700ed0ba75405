// Runs inside the IPVS guest (started by bench/ipvs.ts): the IPVS applier over N
// Services x 10 endpoints in the guest's real kernel. Prints one JSON line per size.
import { execFileSync } from 'node:child_process';
import { IpvsApplier, prepareIpvsNode } from '../src/agent/ipvs/apply.ts';
import { buildProxyModel, type ModelCache, type ServiceInput, type SliceInput } from '../src/agent/model.ts';
import { cleanupAgent } from '../src/agent/agent.ts';
import { createLogger } from '../src/log.ts';

const sizes = (process.argv[2] ?? '1000,10000').split(',').map(Number);
const ENDPOINTS = 10;
const log = createLogger({ level: 'warn' });

function inputs(count: number, version: number): { services: ServiceInput[]; slices: SliceInput[] } {
  const services: ServiceInput[] = [];
  const slices: SliceInput[] = [];
  for (let i = 0; i < count; i++) {
    const name = `svc-${i}`;
    // The first Service changes between versions (one endpoint replaced): a one-Service change.
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

await prepareIpvsNode();
for (const size of sizes) {
  await cleanupAgent(log);
  await prepareIpvsNode();
  const cache: ModelCache = new Map();
  const model = (version: number) => {
    const { services, slices } = inputs(size, version);
    return buildProxyModel(services, slices, { name: 'guest', labels: {}, nodePortAddresses: [] }, { externalIPAllowed: () => false }, cache);
  };
  const applier = new IpvsApplier(4);
  const opts = { scheduler: 'rr' as const, nodeAddresses: [] };
  const m0 = model(0);
  let t = performance.now();
  const first = await applier.apply(m0, true, opts);
  const fullMs = performance.now() - t;
  t = performance.now();
  const again = await applier.apply(m0, true, opts);
  const resyncMs = performance.now() - t;
  const changes: number[] = [];
  for (let v = 1; v <= 5; v++) {
    const m = model(v);
    t = performance.now();
    await applier.apply(m, false, opts);
    changes.push(performance.now() - t);
  }
  // Read back from the kernel, so the count is what is programmed, not what we meant to.
  const saved = execFileSync('ipvsadm-save', ['-n'], { encoding: 'utf8', maxBuffer: 512 * 1024 * 1024 });
  const virtualServers = (saved.match(/^-A /gm) ?? []).length;
  const realServers = (saved.match(/^-a /gm) ?? []).length;
  changes.sort((a, b) => a - b);
  console.log(JSON.stringify({ size, fullMs, resyncMs, resyncWritten: again.written, firstWritten: first.written, changeMs: changes[2], changeMaxMs: changes[4], virtualServers, realServers, rssMiB: process.memoryUsage().rss / 2 ** 20 }));
}
await cleanupAgent(log);
