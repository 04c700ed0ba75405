// Runs inside the IPVS guest (started by bench/ipvs.ts): the IPVS applier over N
// Services x 10 endpoints in the guest's real kernel. Prints one JSON line per size.
import { execFileSync } from 'node:child_process';
import { IpvsApplier, prepareIpvsNode } from '../src/agent/ipvs/apply.ts';
import { cleanupAgent } from '../src/agent/agent.ts';
import { createLogger } from '../src/log.ts';
import { syntheticModels } from './synthetic-services.ts';

const sizes = (process.argv[2] ?? '1000,10000').split(',').map(Number);
const log = createLogger({ level: 'warn' });

await prepareIpvsNode();
for (const size of sizes) {
  await cleanupAgent(log);
  await prepareIpvsNode();
  const model = syntheticModels(size);
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
