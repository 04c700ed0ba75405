// Benchmark: IPVS sync at 1 000 and 10 000 Services x 10 endpoints, in the qemu guest
// (this machine's kernel has no IP_VS; the guest's CPU is emulated, so its times are
// an upper bound for real hardware). Prints the guest's boot time, then per size: the
// first full sync, a full resync with nothing to change (re-reads the kernel), the
// median of five one-Service changes, and what the kernel holds afterwards.
// Needs root and qemu. Usage: node bench/ipvs.ts [sizes=1000,10000]
import { REPO_ROOT } from '../src/devcluster/build.ts';
import { ensureGuestImage, guestUnavailableReason, runInGuest } from '../src/devcluster/guest-vm.ts';
import { createLogger } from '../src/log.ts';

const sizes = process.argv[2] ?? '1000,10000';
const unavailable = guestUnavailableReason();
if (unavailable) {
  console.error(`cannot run: ${unavailable}`);
  process.exit(1);
}
const log = createLogger({ level: 'info' });
const image = await ensureGuestImage(log);
const rows: Record<string, number>[] = [];
const result = await runInGuest(
  {
    image,
    script: `node bench/ipvs-in-guest.ts ${sizes}\n`,
    cpus: 2,
    memoryMiB: 3072,
    timeoutMs: 30 * 60_000,
    log,
    onLine: (line) => {
      if (line.startsWith('{')) rows.push(JSON.parse(line) as Record<string, number>);
      else if (!/^\s*(\[\s*\d|$)/.test(line) && process.env.BENCH_VERBOSE) console.log(`[guest] ${line}`);
    },
  },
  REPO_ROOT,
);
console.log(`guest boot (qemu TCG, 2 vCPUs): ${((result.bootMs ?? NaN) / 1000).toFixed(1)} s; exit ${result.exitCode}`);
console.log('  services   first full sync   full resync (no change)   one-Service change (median / max of 5)   virtual / real servers   RSS');
for (const r of rows) {
  console.log(`  ${String(r.size).padStart(8)}   ${r.fullMs!.toFixed(0).padStart(12)} ms   ${r.resyncMs!.toFixed(0).padStart(12)} ms (${r.resyncWritten} written)   ${r.changeMs!.toFixed(1).padStart(16)} / ${r.changeMaxMs!.toFixed(1)} ms   ${String(r.virtualServers).padStart(12)} / ${r.realServers}   ${r.rssMiB!.toFixed(0)} MiB`);
}
if (result.exitCode !== 0 || rows.length === 0) process.exit(1);
