// Benchmark: the iptables and nftables appliers alone (no API server) over N synthetic
// Services x 10 endpoints, in a fresh network namespace of their own: first full sync
// into an empty kernel, a full resync with nothing to change, and a one-Service change
// (median / max of 5), each split into model+render and apply (the kernel tools).
// Needs root. Usage: node bench/dataplane-sync.ts [sizes=1000,10000] [modes=iptables,nftables]
import { execFileSync } from 'node:child_process';
import { IptablesApplier } from '../src/agent/iptables/apply.ts';
import { renderIptables } from '../src/agent/iptables/render.ts';
import { NftablesApplier } from '../src/agent/nftables/apply.ts';
import { renderNftables } from '../src/agent/nftables/render.ts';
import type { ProxyModel } from '../src/agent/model.ts';
import { syntheticModels } from './synthetic-services.ts';

const [sizesArg = '1000,10000', modesArg = 'iptables,nftables'] = process.argv.slice(2);
if (!process.env.XB_BENCH_IN_NETNS) {
  // Re-run in a new network namespace, so the host's rules are never touched.
  execFileSync('unshare', ['-n', process.execPath, '--disable-warning=ExperimentalWarning', process.argv[1]!, sizesArg, modesArg], { stdio: 'inherit', env: { ...process.env, XB_BENCH_IN_NETNS: '1' } });
  process.exit(0);
}

interface Plane {
  sync(model: ProxyModel, full: boolean): Promise<{ renderMs: number; applyMs: number; written: number }>;
  cleanup(): Promise<unknown>;
}

function plane(mode: string): Plane {
  const timed = async <R>(render: () => R, apply: (r: R) => Promise<{ written: number }>) => {
    let t = performance.now();
    const rendered = render();
    const renderMs = performance.now() - t;
    t = performance.now();
    const { written } = await apply(rendered);
    return { renderMs, applyMs: performance.now() - t, written };
  };
  if (mode === 'nftables') {
    const applier = new NftablesApplier('ip');
    return { sync: (model, full) => timed(() => renderNftables(model, 4, { nodePortCIDRs: [] }), (s) => applier.apply(s, full)), cleanup: () => applier.cleanup() };
  }
  const applier = new IptablesApplier(4);
  return { sync: (model, full) => timed(() => renderIptables(model, 4, { nodePortCIDRs: [] }), (c) => applier.apply(c, full)), cleanup: () => applier.cleanup() };
}

const ms = (n: number): string => `${n.toFixed(1).padStart(8)} ms`;
console.log('data-plane sync, applier only (fresh network namespace, Services x 10 endpoints; model+render / apply)');
console.log('  services  mode      first full sync            full resync (0 written)    one-Service change, median (max of 5)');
for (const size of sizesArg.split(',').map(Number)) {
  for (const mode of modesArg.split(',')) {
    const models = syntheticModels(size);
    const p = plane(mode);
    const m0 = models(0);
    const first = await p.sync(m0, true);
    const resync = await p.sync(m0, true);
    const changes: { renderMs: number; applyMs: number }[] = [];
    for (let v = 1; v <= 5; v++) {
      const m = models(v);
      const r = await p.sync(m, false);
      changes.push({ renderMs: m.buildMs + r.renderMs, applyMs: r.applyMs });
    }
    changes.sort((a, b) => a.renderMs + a.applyMs - (b.renderMs + b.applyMs));
    const median = changes[2]!;
    const max = changes[4]!;
    console.log(
      `  ${String(size).padStart(8)}  ${mode.padEnd(8)} ${ms(m0.buildMs + first.renderMs)} /${ms(first.applyMs)}  ${ms(resync.renderMs)} /${ms(resync.applyMs)} (${resync.written})  ${ms(median.renderMs)} /${ms(median.applyMs)}  (${(max.renderMs + max.applyMs).toFixed(1)} ms)`,
    );
    await p.cleanup();
  }
}
