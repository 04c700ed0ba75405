// Real nodes for the local cluster: per node, containerd (v2, built from its module)
// and kubelet in the node's own network namespace — entered with nsenter --net only,
// so they share the root mount namespace and the volumes kubelet mounts are what
// containerd's runc sees — with their own root and state directories under the
// cluster's work dir, their own cgroup subtree, and kube-proxy beside them for the
// cluster's ordinary Services (kubernetes, kube-dns). Pods get addresses from the
// node's podCIDR (allocated by kube-controller-manager) through Debian's CNI bridge
// and host-local plugins.
//
// Facts of this machine that shape the configuration (measured): root lacks
// CAP_SYS_RESOURCE, so containerd must not lower a container's oom_score_adj below its
// own (restrict_oom_score_adj; without it every sandbox fails with "can't get final
// child's PID from pipe: EOF"), and kubelet keeps its own score; the host is cgroup v1,
// which kubelet 1.36 refuses unless failCgroupV1 is false.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, readdirSync, readFileSync, readlinkSync, rmdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { createCgroup, destroyCgroup, enterCgroupCommand } from './cgroups.ts';
import type { NodeBuild } from './node-build.ts';
import type { NodeNetwork } from './node-network.ts';
import { issueCertificate, kubeconfigYaml, type ClusterPki } from './pki.ts';

const run = promisify(execFile);

export const CLUSTER_DNS_IP = '10.96.0.10';
export const CLUSTER_DOMAIN = 'cluster.local';
/** Zones the nodes are labelled with, in order: node 0 zone-a, node 1 zone-b, ... */
export const zoneOf = (index: number): string => `zone-${String.fromCharCode(97 + (index % 26))}`;

export interface LocalNode {
  name: string;
  netns: string;
  ip: string;
  zone: string;
  /** Filled in once kube-controller-manager has allocated it. */
  podCIDR?: string;
}

/** What stopping a node (or cleaning up after a killed run) needs to know. */
export interface NodeState {
  name: string;
  dir: string;
  cgroup: string;
  sysctls: Record<string, string>;
}

export interface NodeImages {
  archives: string[];
  sandboxImage: string;
}

// kubelet sets these host-wide (they are not per network namespace): stopping the
// nodes puts back what was there.
const KUBELET_SYSCTLS = ['vm.overcommit_memory', 'vm.panic_on_oom', 'kernel.panic', 'kernel.panic_on_oops', 'kernel.keys.root_maxkeys', 'kernel.keys.root_maxbytes'];

/** The host-wide sysctls kubelet will change, as they are before any node starts. */
export function readKubeletSysctls(): Record<string, string> {
  return Object.fromEntries(
    KUBELET_SYSCTLS.flatMap((s) => {
      const v = readSysctl(s);
      return v === undefined ? [] : [[s, v]];
    }),
  );
}

function readSysctl(name: string): string | undefined {
  try {
    return readFileSync(`/proc/sys/${name.replaceAll('.', '/')}`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function containerdConfig(dir: string, build: NodeBuild, images: NodeImages): string {
  return `version = 3
root = "${dir}/containerd/root"
state = "${dir}/containerd/state"
# Host-wide defaults that would be shared between the nodes of this machine.
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.erofs", "io.containerd.image-verifier.v1.bindir"]

[grpc]
  address = "${dir}/containerd/containerd.sock"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "${images.sandboxImage}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "${build.runc}"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["${build.cniBinDir}"]
    conf_dir = "${dir}/cni/net.d"
`;
}

function cniConfig(dir: string, podCIDR: string): string {
  return JSON.stringify(
    {
      cniVersion: '1.0.0',
      name: 'extbackend-local',
      plugins: [
        {
          type: 'bridge',
          bridge: 'cni0',
          isGateway: true,
          // Pod CIDRs are routed (host-gw style), so pods keep their addresses.
          ipMasq: false,
          hairpinMode: true,
          ipam: { type: 'host-local', ranges: [[{ subnet: podCIDR }]], routes: [{ dst: '0.0.0.0/0' }], dataDir: `${dir}/cni/ipam` },
        },
        { type: 'portmap', capabilities: { portMappings: true } },
      ],
    },
    null,
    2,
  );
}

function kubeletConfig(dir: string, node: LocalNode, cgroupRoot: string, pki: { ca: string; cert: string; key: string }, resolvConf: string): string {
  return `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${node.ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: ${pki.ca}}
authorization: {mode: Webhook}
tlsCertFile: ${pki.cert}
tlsPrivateKeyFile: ${pki.key}
containerRuntimeEndpoint: unix://${dir}/containerd/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /${cgroupRoot}
failCgroupV1: false
failSwapOn: false
clusterDNS: [${CLUSTER_DNS_IP}]
clusterDomain: ${CLUSTER_DOMAIN}
resolvConf: ${resolvConf}
podLogsDir: ${dir}/pod-logs
oomScoreAdj: 0
# The host's disk is shared by everything on it: evict only when it is really full.
evictionHard: {memory.available: 100Mi, nodefs.available: 2%, imagefs.available: 2%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
registerNode: true
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
`;
}

export interface StartNodeOptions {
  index: number;
  workDir: string;
  server: string;
  pki: ClusterPki;
  build: NodeBuild;
  kubeProxy: string;
  network: NodeNetwork;
  images: NodeImages;
  clusterCIDR: string;
  clusterId: string;
  /** readKubeletSysctls() from before the first node started: put back when the node stops. */
  sysctls: Record<string, string>;
  logDir: string;
}

export interface RunningNode {
  node: LocalNode;
  state: NodeState;
  /** Writes the CNI configuration for the node's pod CIDR (kubelet reports NetworkReady once it exists). */
  setPodCIDR(podCIDR: string): Promise<void>;
  stop(): Promise<void>;
}

function spawnLogged(name: string, command: string[], out: NodeJS.WritableStream, env?: NodeJS.ProcessEnv): ChildProcess {
  // setpriv --pdeathsig: the child dies with us even when we are SIGKILLed.
  const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', ...command], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
  child.stdout?.pipe(out);
  child.stderr?.pipe(out);
  child.on('error', (err) => out.write(`${name}: ${err.message}\n`));
  return child;
}

async function waitForSocket(file: string, child: ChildProcess, what: string, logFile: string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      const tail = (await readFile(logFile, 'utf8').catch(() => '')).split('\n').slice(-20).join('\n');
      throw new Error(`${what} exited (${child.exitCode ?? child.signalCode}):\n${tail}`);
    }
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(file);
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what}: ${file} not listening after ${timeoutMs / 1000} s`);
    await sleep(100);
  }
}

/** Starts containerd, kubelet and kube-proxy for one node. */
export async function startNode(options: StartNodeOptions): Promise<RunningNode> {
  const { index, workDir, pki, build, network, images } = options;
  const name = `node-${index}`;
  const dir = path.join(workDir, 'nodes', name);
  const certs = path.join(dir, 'pki');
  await Promise.all(['containerd', 'cni/net.d', 'cni/ipam', 'kubelet', 'pod-logs', 'pki'].map((d) => mkdir(path.join(dir, d), { recursive: true })));
  const { netns, ip } = await network.addNode(index);
  const node: LocalNode = { name, netns, ip, zone: zoneOf(index) };
  const cgroup = `extbackend-${options.clusterId}-${name}`;
  const state: NodeState = { name, dir, cgroup, sysctls: options.sysctls };
  const logFile = (component: string): string => path.join(options.logDir, `${name}-${component}.log`);
  const logStream = (component: string): NodeJS.WritableStream => createWriteStream(logFile(component), { flags: 'a' });
  await writeFile(path.join(dir, 'state.json'), JSON.stringify(state));
  createCgroup(`${cgroup}/runtime`);
  const procs: ChildProcess[] = [];
  const nsenter = (command: string[]): string[] => ['nsenter', `--net=/run/netns/${netns}`, '--', ...command];

  const stop = async (): Promise<void> => {
    for (const p of [...procs].reverse()) {
      if (p.exitCode !== null || p.signalCode !== null) continue;
      const exited = new Promise((r) => p.once('exit', r));
      p.kill('SIGTERM');
      const timer = setTimeout(() => p.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    await cleanUpNode(state);
  };

  try {
    // Credentials: kubelet's client (Node authorizer) and serving certificates, kube-proxy's client.
    await writeFile(path.join(certs, 'ca.crt'), pki.caPem);
    await withCaKey(pki, certs, () =>
      Promise.all([
        issueCertificate(certs, 'kubelet-client', `/O=system:nodes/CN=system:node:${name}`, 'client'),
        issueCertificate(certs, 'kubelet-serving', `/CN=${name}`, { serverSANs: [ip, name] }),
        issueCertificate(certs, 'kube-proxy', '/CN=system:kube-proxy', 'client'),
      ]),
    );
    const creds = async (n: string) => ({ cert: await readFile(path.join(certs, `${n}.crt`), 'utf8'), key: await readFile(path.join(certs, `${n}.key`), 'utf8') });
    await writeFile(path.join(dir, 'kubelet.kubeconfig'), kubeconfigYaml(options.server, pki.caPem, `system:node:${name}`, await creds('kubelet-client')), { mode: 0o600 });
    await writeFile(path.join(dir, 'kube-proxy.kubeconfig'), kubeconfigYaml(options.server, pki.caPem, 'system:kube-proxy', await creds('kube-proxy')), { mode: 0o600 });
    // Pods with dnsPolicy Default get the cluster's DNS too: nothing may ask the machine's resolver.
    const resolvConf = path.join(dir, 'resolv.conf');
    await writeFile(resolvConf, `nameserver ${network.routerIP}\n`);
    await writeFile(path.join(dir, 'containerd.toml'), containerdConfig(dir, build, images));
    await writeFile(
      path.join(dir, 'kubelet.yaml'),
      kubeletConfig(dir, node, cgroup, { ca: path.join(certs, 'ca.crt'), cert: path.join(certs, 'kubelet-serving.crt'), key: path.join(certs, 'kubelet-serving.key') }, resolvConf),
    );

    // containerd and its shims (which outlive it by design) live in the node's cgroup: stopping the node kills them all.
    const containerd = spawnLogged('containerd', enterCgroupCommand(`${cgroup}/runtime`, nsenter([build.bin('containerd'), '--config', path.join(dir, 'containerd.toml'), '--log-level', 'warn'])), logStream('containerd'));
    procs.push(containerd);
    await waitForSocket(path.join(dir, 'containerd', 'containerd.sock'), containerd, `${name}: containerd`, logFile('containerd'));
    const ctr = (...args: string[]) => run(build.bin('ctr'), ['--address', path.join(dir, 'containerd', 'containerd.sock'), '--namespace', 'k8s.io', ...args], { maxBuffer: 16 * 1024 * 1024 });
    for (const archive of images.archives) await ctr('images', 'import', '--no-unpack', archive).catch((err: { stderr?: string; message: string }) => {
      throw new Error(`${name}: importing ${archive} failed: ${err.stderr?.trim() || err.message}`);
    });

    const kubelet = spawnLogged('kubelet', nsenter([
      build.bin('kubelet'),
      `--config=${path.join(dir, 'kubelet.yaml')}`,
      `--kubeconfig=${path.join(dir, 'kubelet.kubeconfig')}`,
      `--root-dir=${path.join(dir, 'kubelet')}`,
      `--cert-dir=${certs}`,
      `--hostname-override=${name}`,
      `--node-ip=${ip}`,
      `--node-labels=topology.kubernetes.io/zone=${node.zone}`,
      '--v=1',
    ]), logStream('kubelet'));
    procs.push(kubelet);

    const kubeProxy = spawnLogged('kube-proxy', nsenter([
      options.kubeProxy,
      `--kubeconfig=${path.join(dir, 'kube-proxy.kubeconfig')}`,
      `--hostname-override=${name}`,
      '--proxy-mode=iptables',
      `--cluster-cidr=${options.clusterCIDR}`,
      `--healthz-bind-address=${ip}:10256`,
      '--metrics-bind-address=127.0.0.1:10249',
      // Host-wide conntrack settings are not a test node's to change.
      '--conntrack-max-per-core=0',
      '--v=1',
    ]), logStream('kube-proxy'));
    procs.push(kubeProxy);
  } catch (err) {
    await stop();
    throw err;
  }

  return {
    node,
    state,
    async setPodCIDR(podCIDR) {
      node.podCIDR = podCIDR;
      await network.routePodCIDR(podCIDR, ip);
      await writeFile(path.join(dir, 'cni', 'net.d', '10-extbackend.conflist'), cniConfig(dir, podCIDR));
    },
    stop,
  };
}

/** issueCertificate signs with dir's ca.key: the cluster CA's key is there only while `issue` runs. */
async function withCaKey<T>(pki: ClusterPki, dir: string, issue: () => Promise<T>): Promise<T> {
  const key = path.join(dir, 'ca.key');
  await writeFile(key, await readFile(pki.caKey), { mode: 0o600 });
  try {
    return await issue();
  } finally {
    rmSync(key, { force: true });
  }
}

function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((m): m is string => !!m && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
}

/**
 * Leaves nothing of a node behind: every process in its cgroup (containerd, shims,
 * containers), every mount under its directory (rootfs overlays, volumes, network
 * namespace files), its cgroups, the shim sockets and log links it left outside, and
 * the host-wide sysctls kubelet changed. Safe to run after a SIGKILLed run.
 */
export async function cleanUpNode(state: NodeState): Promise<void> {
  await destroyCgroup(state.cgroup);
  for (let round = 0; round < 5; round++) {
    const mounts = mountsUnder(state.dir);
    if (mounts.length === 0) break;
    for (const m of mounts) await run('umount', ['-l', m]).catch(() => undefined);
  }
  // Shims' sockets live in containerd's fixed state dir; a killed shim leaves its socket.
  const shimSockets = '/run/containerd/s';
  if (existsSync(shimSockets)) {
    for (const entry of readdirSync(shimSockets)) {
      const file = path.join(shimSockets, entry);
      const listening = await new Promise<boolean>((resolve) => {
        const s = net.connect(file);
        s.once('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.once('error', () => resolve(false));
      });
      if (!listening) rmSync(file, { force: true });
    }
  }
  // kubelet links each container's log from a fixed directory.
  const logLinks = '/var/log/containers';
  if (existsSync(logLinks)) {
    for (const entry of readdirSync(logLinks)) {
      const link = path.join(logLinks, entry);
      try {
        if (readlinkSync(link).startsWith(state.dir)) unlinkSync(link);
      } catch {
        /* not a link */
      }
    }
  }
  // The fixed directories kubelet and the shims made, if nothing else uses them.
  for (const dir of [shimSockets, '/run/containerd', logLinks]) {
    try {
      rmdirSync(dir);
    } catch {
      /* not empty, or not there */
    }
  }
  for (const [name, value] of Object.entries(state.sysctls)) {
    try {
      if (readSysctl(name) !== value) writeFileSync(`/proc/sys/${name.replaceAll('.', '/')}`, value);
    } catch {
      /* read-only here: nothing was changed either */
    }
  }
}
