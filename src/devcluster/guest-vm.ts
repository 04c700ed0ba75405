// A throwaway Linux guest for what this machine's kernel cannot do (IPVS): qemu with
// software emulation (TCG; KVM guests hang here) boots Debian's kernel package with a
// tiny busybox initramfs. The guest's root is this machine's own root, shared read-only
// over 9p under a tmpfs overlay, so it has the same Node, iptables, ipvsadm and project
// checkout without building a root filesystem; writes stay in guest memory.
// The only network is qemu's user mode with `restrict=on`: the guest reaches nothing
// but the API server, forwarded from one fixed guest address.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readFile, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from '../log.ts';
import { systemCommand } from '../net/system-command.ts';
import { cacheRoot } from './build.ts';

const run = promisify(execFile);

/** Where the guest finds the API server (forwarded to the host's loopback). */
export const GUEST_API_ADDRESS = '10.0.2.100';
export const GUEST_API_PORT = 6443;

const PACKAGES = { kernel: 'linux-image-amd64', busybox: 'busybox-static' };
// Modules the initramfs needs to mount the shared root; the rest load from the share.
const INITRAMFS_MODULES = ['virtio_pci', '9pnet_virtio', '9p', 'overlay'];
// Bump when the image layout changes, so stale cache entries are not reused.
const RECIPE = 'v2';

export interface GuestImage {
  dir: string;
  kernel: string;
  initramfs: string;
  kernelVersion: string;
  /** Holds lib/modules/<version>, bind-mounted over the guest's /lib/modules. */
  modulesRoot: string;
  busybox: string;
}

async function aptDownload(pkg: string, into: string): Promise<string> {
  await run(systemCommand('apt-get'), ['download', '-qq', pkg], { cwd: into });
  const deb = (await readdir(into)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (!deb) throw new Error(`apt-get download ${pkg} left no .deb in ${into}`);
  return path.join(into, deb);
}

/** The versioned kernel package the `linux-image-amd64` meta package points at now. */
async function kernelPackage(): Promise<string> {
  const depends = async (): Promise<string> => (await run(systemCommand('apt-cache'), ['depends', PACKAGES.kernel])).stdout;
  // A machine whose packages were all preinstalled may never have fetched the package lists.
  const stdout = await depends().catch(async () => {
    await run(systemCommand('apt-get'), ['update', '-qq']);
    return depends();
  });
  const m = /Depends:\s*(linux-image-[0-9][^\s]*)/.exec(stdout);
  if (!m?.[1]) throw new Error(`cannot tell which kernel ${PACKAGES.kernel} depends on (is the apt package list current?):\n${stdout}`);
  return m[1];
}

/** Modules and their dependencies, in load order, from a modules.dep. */
export function moduleClosure(modulesDep: string, names: string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of modulesDep.split('\n')) {
    const [mod, rest = ''] = line.split(':');
    if (mod) deps.set(mod.trim(), rest.trim().split(/\s+/).filter(Boolean));
  }
  const byName = (name: string): string => {
    const found = [...deps.keys()].find((k) => path.basename(k).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_') === name.replace(/-/g, '_'));
    if (!found) throw new Error(`module ${name} is not in the kernel package`);
    return found;
  };
  const order: string[] = [];
  const visit = (mod: string): void => {
    if (order.includes(mod)) return;
    // modules.dep lists a module's full dependency set, deepest last.
    for (const d of [...(deps.get(mod) ?? [])].reverse()) visit(d);
    order.push(mod);
  };
  for (const n of names) visit(byName(n));
  return order;
}

function initScript(modules: string[]): string {
  return `#!/bin/busybox sh
# Stage 1: load what mounting the shared root needs, overlay it with tmpfs, switch.
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /lower /upper /newroot
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
${modules.map((m) => `insmod /modules/${path.basename(m)}`).join('\n')}
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower || { echo "xb-guest: cannot mount the shared root"; poweroff -f; }
mount -t tmpfs -o mode=755 tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /newroot
mkdir -p /newroot/xb-job
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xbjob /newroot/xb-job
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /xb-job/stage2.sh
`;
}

/** Builds (once, cached outside the repository) the kernel, modules and initramfs. */
export async function ensureGuestImage(log: Logger): Promise<GuestImage> {
  const kernelPkg = await kernelPackage();
  const digest = createHash('sha256').update(`${RECIPE}|${kernelPkg}|${initScript(INITRAMFS_MODULES)}`).digest('hex').slice(0, 12);
  const dir = path.join(cacheRoot(), 'guest', `${kernelPkg}-${digest}`);
  const manifest = path.join(dir, 'image.json');
  if (existsSync(manifest)) return JSON.parse(await readFile(manifest, 'utf8')) as GuestImage;

  log.info('building the IPVS test guest (first time only; cached afterwards)', { kernel: kernelPkg, into: dir });
  const work = `${dir}.tmp-${process.pid}`;
  await rm(work, { recursive: true, force: true });
  const debs = path.join(work, 'debs');
  await mkdir(debs, { recursive: true });
  const root = path.join(work, 'root');
  for (const pkg of [kernelPkg, PACKAGES.busybox]) {
    const deb = await aptDownload(pkg, debs);
    await run(systemCommand('dpkg-deb'), ['-x', deb, root]);
  }
  const version = (await readdir(path.join(root, 'lib', 'modules')))[0];
  if (!version) throw new Error(`${kernelPkg} holds no modules`);
  const busybox = path.join(root, 'bin', 'busybox');
  await run(busybox, ['depmod', '-b', root, version]);
  const modulesDir = path.join(root, 'lib', 'modules', version);
  const modules = moduleClosure(await readFile(path.join(modulesDir, 'modules.dep'), 'utf8'), INITRAMFS_MODULES);

  const initramfs = path.join(work, 'initramfs');
  await mkdir(path.join(initramfs, 'bin'), { recursive: true });
  await mkdir(path.join(initramfs, 'modules'));
  await copyFile(busybox, path.join(initramfs, 'bin', 'busybox'));
  await chmod(path.join(initramfs, 'bin', 'busybox'), 0o755);
  for (const m of modules) await copyFile(path.join(modulesDir, m), path.join(initramfs, 'modules', path.basename(m)));
  await writeFile(path.join(initramfs, 'init'), initScript(modules));
  await chmod(path.join(initramfs, 'init'), 0o755);
  // busybox cpio cannot create archives; a shell pipeline with find does.
  await run(systemCommand('sh'), ['-c', `cd "${initramfs}" && find . | "${busybox}" cpio -o -H newc 2>/dev/null | gzip -1 > ../initramfs.cpio.gz`]);

  const image: GuestImage = {
    dir,
    kernel: path.join(dir, 'root', 'boot', `vmlinuz-${version}`),
    initramfs: path.join(dir, 'initramfs.cpio.gz'),
    kernelVersion: version,
    modulesRoot: path.join(dir, 'root', 'lib', 'modules'),
    busybox: path.join(dir, 'root', 'bin', 'busybox'),
  };
  await rm(debs, { recursive: true });
  await rm(initramfs, { recursive: true });
  await writeFile(path.join(work, 'image.json'), JSON.stringify(image, null, 2));
  await rm(dir, { recursive: true, force: true });
  await rename(work, dir);
  return image;
}

/** Why a guest cannot start here, or undefined when it can. */
export function guestUnavailableReason(): string | undefined {
  if (process.getuid?.() !== 0) return 'the IPVS guest needs root (9p share of / and network namespaces in the guest)';
  if (!existsSync(systemCommand('qemu-system-x86_64')) || systemCommand('qemu-system-x86_64') === 'qemu-system-x86_64') return 'qemu-system-x86_64 is not installed (Debian package qemu-system-x86; .ci/install-packages installs it)';
  if (!existsSync(systemCommand('apt-get'))) return 'apt-get is needed to fetch the guest kernel';
  return undefined;
}

export interface GuestRunOptions {
  image: GuestImage;
  /** Shell script run as root in the guest, in the project directory. */
  script: string;
  env?: Record<string, string>;
  /**
   * Host loopback port of the API server: forwarded to GUEST_API_ADDRESS:GUEST_API_PORT,
   * and relayed from the same port on every guest address (so a host kubeconfig works).
   */
  apiServerPort?: number;
  cpus?: number;
  memoryMiB?: number;
  timeoutMs: number;
  /** Every console line, as it arrives. */
  onLine?: (line: string) => void;
  /** Puts files into the job directory (shared with the guest as /xb-job) before boot. */
  beforeBoot?: (jobDir: string) => Promise<void>;
  log: Logger;
}

export interface GuestRunResult {
  /** The script's exit code; undefined when the guest died or timed out before it finished. */
  exitCode: number | undefined;
  /** From starting qemu to the guest's userspace being ready (modules loaded, network up). */
  bootMs: number | undefined;
  /** The job directory (shared with the guest); the caller removes it. */
  jobDir: string;
  console: string;
}

const READY_MARK = 'xb-guest: ready';

function stage2(o: GuestRunOptions, projectDir: string): string {
  const env = Object.entries(o.env ?? {}).map(([k, v]) => `export ${k}='${v.replace(/'/g, `'\\''`)}'`);
  return `# Stage 2, on the shared root: writable scratch, guest modules, network, then the job.
export PATH='${path.dirname(process.execPath)}':/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
# /tmp stays the overlay (writable, in guest memory): the checkout may live under it.
mount -t tmpfs tmpfs /run
mkdir -p /lib/modules /run/netns
mount --bind '${o.image.modulesRoot}' /lib/modules
BB='${o.image.busybox}'
# libcrc32c asks the crypto API for crc32c, which nothing loads on demand here.
for m in virtio_net crc32c_generic ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_dh ip_vs_sed ip_vs_nq ip_vs_mh dummy veth nf_nat nf_conntrack_netlink xt_nat xt_MASQUERADE xt_mark xt_comment xt_conntrack xt_addrtype xt_set xt_multiport ipt_REJECT ip6t_REJECT nf_reject_ipv4 ip_set ip_set_hash_ip ip_set_hash_ipport ip_set_hash_ipportip ip_set_bitmap_port nf_tables nft_chain_nat nft_compat nft_reject_inet nft_ct iptable_nat iptable_filter ip6table_nat ip6table_filter; do
  "$BB" modprobe "$m" || echo "xb-guest: module $m did not load"
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
hostname xb-guest
${o.apiServerPort ? `node '${path.join(projectDir, 'src', 'devcluster', 'tcp-relay.ts')}' 0.0.0.0:${o.apiServerPort} ${GUEST_API_ADDRESS}:${GUEST_API_PORT} > /run/api-relay.log 2>&1 &\nfor i in $(seq 100); do grep -q relaying /run/api-relay.log && break; sleep 0.1; done` : ''}
echo '${READY_MARK}'
${env.join('\n')}
cd '${projectDir}'
sh /xb-job/job.sh
echo $? > /xb-job/exit-code
# A process the kernel killed or that crashed says so only here.
dmesg | grep -iE 'segfault|general protection|out of memory|killed process|invalid opcode|trap' | sed 's/^/xb-guest: kernel: /'
sync
"$BB" poweroff -f
`;
}

/** Boots the guest, runs one script in it and powers it off. */
export async function runInGuest(o: GuestRunOptions, projectDir: string): Promise<GuestRunResult> {
  const jobDir = await mkdtemp(path.join(tmpdir(), 'xb-guest-'));
  await writeFile(path.join(jobDir, 'stage2.sh'), stage2(o, projectDir));
  await writeFile(path.join(jobDir, 'job.sh'), o.script);
  await o.beforeBoot?.(jobDir);
  // Each guest connection to the API address runs one busybox nc to the host's loopback.
  const forward = o.apiServerPort ? `,guestfwd=tcp:${GUEST_API_ADDRESS}:${GUEST_API_PORT}-cmd:${o.image.busybox} nc 127.0.0.1 ${o.apiServerPort}` : '';
  const args = [
    // One emulation thread: Node (a JIT patching its own code from several threads)
    // crashed now and then with SIGSEGV under multi-threaded TCG.
    '-accel', 'tcg,thread=single',
    '-machine', 'q35',
    // No AVX: qemu's TCG emulation of it is new, and Node crashed (SIGSEGV) under '-cpu max'.
    '-cpu', 'Nehalem',
    '-smp', String(o.cpus ?? 2),
    '-m', String(o.memoryMiB ?? 2048),
    '-nographic', '-no-reboot',
    '-kernel', o.image.kernel,
    '-initrd', o.image.initramfs,
    '-append', 'console=ttyS0 panic=-1 quiet loglevel=3 net.ifnames=0',
    '-virtfs', 'local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap',
    '-virtfs', `local,path=${jobDir},mount_tag=xbjob,security_model=none`,
    '-netdev', `user,id=n0,restrict=on${forward}`,
    '-device', 'virtio-net-pci,netdev=n0',
  ];
  const started = performance.now();
  let bootMs: number | undefined;
  let consoleText = '';
  const qemu = spawn(systemCommand('qemu-system-x86_64'), args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let pending = '';
  const onData = (d: Buffer): void => {
    const text = d.toString();
    consoleText += text;
    pending += text;
    const lines = pending.split(/\r?\n/);
    pending = lines.pop() ?? '';
    for (const line of lines) {
      if (bootMs === undefined && line.includes(READY_MARK)) bootMs = performance.now() - started;
      o.onLine?.(line);
    }
  };
  qemu.stdout.on('data', onData);
  qemu.stderr.on('data', onData);
  const timer = setTimeout(() => {
    o.log.error('guest timed out; killing qemu', { timeoutMs: o.timeoutMs });
    qemu.kill('SIGKILL');
  }, o.timeoutMs);
  await new Promise<void>((resolve) => qemu.on('close', () => resolve()));
  clearTimeout(timer);
  const codeText = await readFile(path.join(jobDir, 'exit-code'), 'utf8').catch(() => undefined);
  return { exitCode: codeText === undefined ? undefined : Number(codeText.trim()), bootMs, jobDir, console: consoleText };
}
