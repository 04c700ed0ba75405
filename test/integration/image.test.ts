// The image the nodes run (src/devcluster/image.ts; test/run.ts builds it before the
// tests), checked without a container runtime: skopeo and umoci unpack its OCI archive
// (umoci also derives the runtime spec a runtime would use from the image config), and
// its programs run from that root file system as a runtime would start them: fresh
// mount, PID and network namespaces, /proc and /dev mounted, chroot, the image's user
// and environment.
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import test from 'ava';
import { renderIptables, restoreInput } from '../../src/agent/iptables/render.ts';
import { buildProxyModel, ModelCache, type ServiceInput, type SliceInput } from '../../src/agent/model.ts';
import { NftablesApplier, type NftRunner } from '../../src/agent/nftables/apply.ts';
import { renderNftables, TABLE } from '../../src/agent/nftables/render.ts';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { ensureImage, ensurePauseImage, IMAGE_NAME, PAUSE_IMAGE_NAME, type BuiltImage } from '../../src/devcluster/image.ts';
import { systemCommand } from '../../src/net/system-command.ts';

const exec = promisify(execFile);

interface ImageConfig {
  User?: string;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
}

interface Unpacked {
  rootfs: string;
  config: ImageConfig;
  /** The runtime spec umoci derives from the image config (and the image's /etc/passwd). */
  spec: { process: { user: { uid: number; gid: number }; args: string[]; env: string[] } };
}

let dir = '';
let app: Unpacked;
let pause: Unpacked;

async function unpack(built: BuiltImage, into: string): Promise<Unpacked> {
  const layout = path.join(into, 'layout');
  await mkdir(into);
  await exec(systemCommand('skopeo'), ['copy', '--quiet', `oci-archive:${built.archive}:${built.name}`, `oci:${layout}:image`]);
  await exec(systemCommand('umoci'), ['unpack', '--image', `${layout}:image`, path.join(into, 'bundle')]);
  const inspected = await exec(systemCommand('skopeo'), ['inspect', '--config', `oci:${layout}:image`]);
  return {
    rootfs: path.join(into, 'bundle', 'rootfs'),
    config: (JSON.parse(inspected.stdout) as { config: ImageConfig }).config,
    spec: JSON.parse(await readFile(path.join(into, 'bundle', 'config.json'), 'utf8')) as Unpacked['spec'],
  };
}

// test/run.ts has built both (a cold build outlasts ava's timeout); here that is a hash.
const image = await ensureImage();
const pauseImage = await ensurePauseImage();

test.before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'extbackend-image-test-'));
  app = await unpack(image, path.join(dir, 'app'));
  pause = await unpack(pauseImage, path.join(dir, 'pause'));
});

test.after.always(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs argv in an unpacked image's root file system as `user` ("uid:gid"), with the
 * image's environment only, in new mount and PID namespaces and a fresh network
 * namespace (or the named one).
 */
function inImage(user: string, argv: string[], options: { netns?: string; input?: string; image?: Unpacked } = {}): Promise<Ran> {
  const { rootfs, config } = options.image ?? app;
  // A runtime creates /dev and /proc when the image lacks them (pause has only /pause).
  const script = 'r=$1 u=$2; shift 2; if [ -d "$r/dev" ]; then mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" || exit 125; fi; exec chroot --userspec="$u" "$r" "$@"';
  const namespaces = ['--mount', '--pid', '--fork', '--kill-child', ...(options.netns ? [] : ['--net'])];
  const enter = options.netns ? [systemCommand('nsenter'), `--net=/run/netns/${options.netns}`] : [];
  const command = [...enter, systemCommand('unshare'), ...namespaces, systemCommand('sh'), '-c', script, 'sh', rootfs, user, ...argv];
  return new Promise((resolve, reject) => {
    const child = spawn(command[0]!, command.slice(1), { env: Object.fromEntries((config.Env ?? []).map((e) => e.split(/=(.*)/s, 2) as [string, string])) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }));
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input);
  });
}

async function inImageOk(user: string, argv: string[], options: { netns?: string; input?: string; image?: Unpacked } = {}): Promise<string> {
  const ran = await inImage(user, argv, options);
  if (ran.code !== 0) throw new Error(`${argv.join(' ')} in the image exited ${ran.code}: ${ran.stderr.trim() || ran.stdout.trim()}`);
  return ran.stdout;
}

test('the image runs the CLI through the shipped entrypoint, as user 65532', async (t) => {
  const { config, spec } = app;
  t.is(image.name, IMAGE_NAME);
  t.deepEqual(config.Entrypoint, ['node', '--disable-warning=ExperimentalWarning', '/app/bin/extbackend.js']);
  t.is(config.Cmd, undefined, 'arguments come from the pod spec');
  t.is(config.User, '65532:65532');
  t.is(config.WorkingDir, '/app');
  // What a runtime would run, as umoci derives it from the image config and /etc/passwd.
  t.deepEqual(spec.process.user, { uid: 65532, gid: 65532 });
  t.deepEqual(spec.process.args, config.Entrypoint);
  t.true(spec.process.env.includes('HOME=/home/nonroot'), 'user 65532 has a passwd entry');

  const { version } = JSON.parse(await readFile(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  t.is(await inImageOk(config.User!, [...config.Entrypoint!, 'version']), `extbackend ${version}\n`);
  t.is(await inImageOk(config.User!, ['node', '-p', 'process.version']), `v${(await exec(process.execPath, ['-p', 'process.versions.node'])).stdout.trim()}\n`, 'the Node of package-lock.json');
});

test('every application file is readable by the image user, and none writable', async (t) => {
  const { rootfs, config } = app;
  const files = (await readdir(path.join(rootfs, 'app'), { recursive: true, withFileTypes: true })).filter((e) => e.isFile()).length;
  const script = "const fs = require('fs'); let n = 0; for (const f of fs.readdirSync('/app', { recursive: true })) { const p = '/app/' + f; if (fs.lstatSync(p).isFile()) { fs.readFileSync(p); n++; } } console.log(n);";
  t.is(Number(await inImageOk(config.User!, ['node', '-e', script])), files);
  t.true(files > 100, 'bin/, src/ and node_modules are there');
  const write = "try { require('fs').writeFileSync('/app/src/x', ''); console.log('written'); } catch (err) { console.log(err.code); }";
  t.is(await inImageOk(config.User!, ['node', '-e', write]), 'EACCES\n', 'nor writable by it');
});

test('the data-plane tools run as root: iptables in nft mode, nft, ipset, ipvsadm, ip, conntrack', async (t) => {
  const tools: [string[], RegExp][] = [
    [['iptables', '-V'], /^iptables v1\.8\.\d+ \(nf_tables\)/],
    [['ip6tables', '-V'], /^ip6tables v1\.8\.\d+ \(nf_tables\)/],
    [['iptables-save', '-V'], /\(nf_tables\)/],
    [['nft', '--version'], /^nftables v1\./],
    [['ipset', 'version'], /^ipset v7\.\d+/],
    [['ip', '-V'], /^ip utility, iproute2-/],
    [['conntrack', '--version'], /^conntrack v1\.4\.\d+/],
  ];
  for (const [argv, expected] of tools) t.regex(await inImageOk('0:0', argv), expected, argv.join(' '));
  // This kernel has no IP_VS: ipvsadm runs and says so (the IPVS guest suite covers the rest).
  const ipvsadm = await inImage('0:0', ['ipvsadm', '--version']);
  t.regex(ipvsadm.stdout + ipvsadm.stderr, /ipvsadm v1\.\d+|Can't initialize ipvs/, 'ipvsadm itself ran (not a missing binary or library)');
});

test('the runtime layer holds what runs and nothing else: no shell, no package manager, no docs', (t) => {
  const { rootfs } = app;
  for (const absent of ['bin/sh', 'bin/bash', 'usr/bin/apt-get', 'usr/bin/dpkg', 'usr/share/man', 'usr/share/locale', 'usr/share/info', 'etc/alternatives']) {
    t.false(existsSync(path.join(rootfs, absent)), `/${absent} is not in the image`);
  }
  for (const present of ['etc/protocols', 'etc/services', 'etc/ssl/certs/ca-certificates.crt', 'etc/iproute2/rt_tables', 'var/lib/dpkg/status.d/iptables']) {
    t.true(existsSync(path.join(rootfs, present)), `/${present} is in the image`);
  }
  // Node alone is 108.5 MB (stripped); the first unoptimised build was 317 MiB unpacked.
  t.true(image.unpackedBytes < 200e6, `unpacked ${image.unpackedBytes} bytes`);
});

// Services that need most of the extensions the agent's rules use: ClientIP affinity
// (recent), NodePorts (addrtype), externalTrafficPolicy Local, several endpoints
// (statistic), a Service with none (REJECT), UDP, and both families.
function agentModel() {
  const services: ServiceInput[] = [];
  const slices: SliceInput[] = [];
  const add = (name: string, spec: ServiceInput['spec'], addressType: 'IPv4' | 'IPv6', addresses: string[], protocol = 'TCP'): void => {
    services.push({ metadata: { name, namespace: 'image' }, spec: { ports: [{ name: 'p', port: 80, protocol, nodePort: spec?.type === 'NodePort' ? 30080 + services.length : undefined }], ...spec } });
    slices.push({
      metadata: { name, namespace: 'image', labels: { 'kubernetes.io/service-name': name } },
      addressType,
      ports: [{ name: 'p', port: 8080, protocol }],
      endpoints: addresses.map((a) => ({ addresses: [a], conditions: { ready: true } })),
    });
  };
  add('spread', { clusterIP: '10.96.0.10' }, 'IPv4', ['198.18.0.2', '198.18.0.3', '198.18.0.4']);
  add('sticky', { clusterIP: '10.96.0.11', sessionAffinity: 'ClientIP', sessionAffinityConfig: { clientIP: { timeoutSeconds: 60 } } }, 'IPv4', ['198.18.0.5', '198.18.0.6']);
  add('nodeport', { clusterIP: '10.96.0.12', type: 'NodePort', externalTrafficPolicy: 'Local' }, 'IPv4', ['198.18.0.7']);
  add('dns', { clusterIP: '10.96.0.13' }, 'IPv4', ['198.18.0.8'], 'UDP');
  add('empty', { clusterIP: '10.96.0.14' }, 'IPv4', []);
  add('six', { clusterIP: 'fd00:10:96::10' }, 'IPv6', ['2001:db8::2', '2001:db8::3']);
  return buildProxyModel(services, slices, { name: 'n', labels: {}, nodePortAddresses: [] }, { externalIPAllowed: () => false }, new ModelCache());
}

test("the agent's iptables, nftables and ipset input loads through the image's tools in a fresh network namespace", async (t) => {
  const netns = `xbimg-${randomBytes(3).toString('hex')}`;
  await exec(systemCommand('ip'), ['netns', 'add', netns]);
  t.teardown(() => exec(systemCommand('ip'), ['netns', 'del', netns]).then(() => undefined));
  const model = agentModel();

  for (const family of [4, 6] as const) {
    const chains = renderIptables(model, family, { nodePortCIDRs: [] });
    const v = family === 4 ? '' : '6';
    await inImageOk('0:0', [`ip${v}tables-restore`, '--noflush'], { netns, input: restoreInput(chains, []) });
    const saved = await inImageOk('0:0', [`ip${v}tables-save`], { netns });
    for (const c of chains) t.true(saved.includes(`:${c.name} `), `ip${v}tables-save lists ${c.name}`);
    t.is(saved.match(/^-A XB-/gm)?.length, chains.reduce((n, c) => n + c.rules.length, 0), `every IPv${family} rule is in the kernel`);
    if (family === 4) t.regex(saved, / -m recent --rcheck --seconds 60 --reap --name XB-SEP-\S+ --mask 255\.255\.255\.255 --rsource /, 'the recent extension round-trips');
  }

  const nft: NftRunner = (args, input) => inImageOk('0:0', ['nft', ...args], { netns, input });
  const result = await new NftablesApplier('ip', nft).apply(renderNftables(model, 4, { nodePortCIDRs: [] }), true);
  t.true(result.written > 0);
  t.regex(await nft(['list', 'tables']), new RegExp(`^table ip ${TABLE}$`, 'm'));

  await inImageOk('0:0', ['ipset', 'restore'], { netns, input: 'create XB-TEST hash:ip,port family inet\nadd XB-TEST 198.18.0.2,tcp:8080\n' });
  t.regex(await inImageOk('0:0', ['ipset', 'list', 'XB-TEST', '-o', 'save'], { netns }), /^add XB-TEST 198\.18\.0\.2,tcp:8080$/m);
  const conntrack = await inImage('0:0', ['conntrack', '-L'], { netns });
  t.is(conntrack.code, 0, conntrack.stderr);
  t.regex(conntrack.stderr, /\d+ flow entries have been shown/);
});

test("the pause image is Kubernetes' pause, static, as user 65535", async (t) => {
  t.is(pauseImage.name, PAUSE_IMAGE_NAME);
  t.deepEqual(pause.config.Entrypoint, ['/pause']);
  t.is(pause.config.User, '65535:65535');
  t.deepEqual(await readdir(pause.rootfs), ['pause'], 'nothing but the program (FROM scratch)');
  // A root holding nothing else has no dynamic loader: it runs only if it is static.
  t.regex(await inImageOk('65535:65535', ['/pause', '-v'], { image: pause }), /^pause\.c v3\.10\.\d+-v1\.\d+\.\d+$/m);
});
