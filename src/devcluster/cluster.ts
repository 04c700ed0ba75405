// A real, throwaway Kubernetes control plane on this machine: etcd, kube-apiserver and
// kube-controller-manager on free ports with fresh credentials. Used by the tests and
// by `npm start` when no cluster is configured. With `nodes`, also kube-scheduler,
// cluster DNS and that many real nodes (kubelet + containerd in network namespaces,
// see nodes.ts) that run the project's image as users run it.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import https from 'node:https';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { logger } from '../log.ts';
import { ensureControlPlane, type ControlPlaneBinary, type ControlPlaneBuild } from './build.ts';
import { kubeDnsManifest, corefile, waitForClusterDns } from './cluster-dns.ts';
import { ensureImage, ensurePauseImage } from './image.ts';
import { ensureNodeBinaries } from './node-build.ts';
import { createNodeNetwork, removeAbandonedNodeNetwork, ROUTER_NS, type NodeNetwork } from './node-network.ts';
import { cleanUpNode, readKubeletSysctls, startNode, type LocalNode, type NodeImages, type NodeState, type RunningNode } from './nodes.ts';
import { createPki, issueCertificate, kubeconfigYaml, type ClusterPki } from './pki.ts';

// Dual-stack: Services that ask for it (the operator's prefer both families) get an IPv6 cluster IP too.
export const SERVICE_CIDR = '10.96.0.0/16,fd00:10:96::/112';
export const POD_CIDR = '10.244.0.0/16';

// Controllers whose behaviour our objects depend on: ownerReference GC, namespace
// deletion, EndpointSlice mirroring (so `skip-mirror` is really tested), the
// EndpointSlice controller, service accounts and their tokens.
const CONTROLLERS_WITHOUT_NODES = [
  'garbage-collector-controller',
  'namespace-controller',
  'endpointslice-controller',
  'endpointslice-mirroring-controller',
  'serviceaccount-controller',
  'serviceaccount-token-controller',
  'root-ca-certificate-publisher-controller',
  'clusterrole-aggregation-controller',
  'service-cidr-controller',
  // Writes a ValidatingAdmissionPolicy's status.typeChecking (the shipped policy is checked for warnings).
  'validatingadmissionpolicy-status-controller',
];

// With nodes, what makes workloads run: Deployments and DaemonSets become pods, nodes get
// pod CIDRs, and unreachable nodes are noticed.
const CONTROLLERS_FOR_NODES = [
  'deployment-controller',
  'replicaset-controller',
  'daemonset-controller',
  'node-ipam-controller',
  'node-lifecycle-controller',
  'pod-garbage-collector-controller',
  'taint-eviction-controller',
  'ttl-controller',
];

export interface LocalClusterOptions {
  /** Extra IPs or names the API server certificate must cover (e.g. a veth address). */
  extraSANs?: string[];
  /** Where process logs and state go; a fresh temp dir by default (removed on stop). */
  workDir?: string;
  /** Real nodes to add (kubelet, containerd, kube-proxy; plus kube-scheduler and cluster DNS). */
  nodes?: number;
  /** Images every node's containerd gets; by default the project's image and the pause image, built here (image.ts). */
  images?: NodeImages;
}

export interface LocalCluster {
  kubeconfig: string;
  kubeconfigYaml: string;
  server: string;
  apiserverPort: number;
  /** etcd's client URL (plain HTTP on loopback): fault tests compact it. */
  etcdUrl: string;
  version: string;
  build: ControlPlaneBuild;
  workDir: string;
  pki: ClusterPki;
  /** The real nodes (empty without `nodes`), their network for attaching outside hosts. */
  nodes: LocalNode[];
  nodeNetwork?: NodeNetwork;
  /**
   * Stops one component (SIGKILL by default, as a crash would) and waits for it to exit;
   * for fault tests. The rest of the cluster keeps running.
   */
  stopComponent(component: ControlPlaneComponent, signal?: NodeJS.Signals): Promise<void>;
  /** Starts a stopped component again with its original flags and waits until it is healthy. */
  startComponent(component: ControlPlaneComponent): Promise<void>;
  stop(): Promise<void>;
}

export type ControlPlaneComponent = 'etcd' | 'kube-apiserver' | 'kube-controller-manager';

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      srv.close(() => resolve(port));
    });
  });
}

/** Non-loopback addresses of this host, for certificate SANs and the advertise address. */
function hostAddresses(): string[] {
  return Object.values(os.networkInterfaces())
    .flat()
    .filter((a): a is os.NetworkInterfaceInfo => !!a && !a.internal && !a.address.startsWith('fe80'))
    .map((a) => a.address);
}

class ProcessGroup {
  private readonly procs: { name: string; child: ChildProcess; binary: string; args: string[] }[] = [];
  private readonly log = logger('local-cluster');
  private readonly logDir: string;
  constructor(logDir: string) {
    this.logDir = logDir;
  }

  start(name: string, binary: string, args: string[]): ChildProcess {
    const out = createWriteStream(path.join(this.logDir, `${name}.log`), { flags: 'a' });
    // setpriv --pdeathsig: the child dies with us even when we are SIGKILLed, so a
    // crashed test run never leaves an API server behind.
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', binary, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.pipe(out);
    child.stderr.pipe(out);
    child.on('exit', (code, signal) => this.log.debug('process exited', { name, code, signal }));
    const previous = this.procs.findIndex((p) => p.name === name);
    if (previous >= 0) this.procs.splice(previous, 1);
    this.procs.push({ name, child, binary, args });
    return child;
  }

  /** Sends `signal` to the named process and waits until it has exited. */
  async stop(name: string, signal: NodeJS.Signals): Promise<void> {
    const proc = this.procs.find((p) => p.name === name);
    if (!proc) throw new Error(`no process named ${name}`);
    const { child } = proc;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    await exited;
  }

  /** Starts the named process again with the arguments it was first started with. */
  restart(name: string): ChildProcess {
    const proc = this.procs.find((p) => p.name === name);
    if (!proc) throw new Error(`no process named ${name}`);
    if (proc.child.exitCode === null && proc.child.signalCode === null) throw new Error(`${name} is still running`);
    return this.start(name, proc.binary, proc.args);
  }

  async logTail(name: string, lines = 30): Promise<string> {
    const text = await readFile(path.join(this.logDir, `${name}.log`), 'utf8').catch(() => '');
    return text.split('\n').slice(-lines).join('\n');
  }

  /** Stops in reverse start order: SIGTERM, then SIGKILL after a grace period. */
  async stopAll(graceMs = 10_000): Promise<void> {
    for (const { child } of [...this.procs].reverse()) {
      if (child.exitCode !== null || child.signalCode !== null) continue;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    }
    this.procs.length = 0;
  }
}

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs: number, failFast?: () => Promise<string | undefined>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const failure = await failFast?.();
    if (failure) throw new Error(`${what}: ${failure}`);
    if (await check().catch(() => false)) return;
    await sleep(200);
  }
  throw new Error(`${what}: not ready after ${timeoutMs / 1000} s`);
}

function httpOk(url: string, options: https.RequestOptions = {}): Promise<boolean> {
  const client = url.startsWith('https:') ? https : http;
  return new Promise((resolve) => {
    const req = client.get(url, { ...options, timeout: 2000 }, (res) => {
      res.resume();
      resolve(res.statusCode === 200);
    });
    req.on('error', () => resolve(false));
    req.on('timeout', () => req.destroy());
  });
}

const WORK_DIR_PREFIX = 'extbackend-cluster-';

/**
 * Removes work dirs of clusters whose owner died without cleaning up (SIGKILL): their
 * processes are gone already (pdeathsig), only the files stay behind.
 */
async function removeAbandonedWorkDirs(): Promise<void> {
  const entries = await readdir(os.tmpdir()).catch(() => [] as string[]);
  for (const name of entries.filter((e) => e.startsWith(WORK_DIR_PREFIX))) {
    const dir = path.join(os.tmpdir(), name);
    const owner = Number((await readFile(path.join(dir, 'owner.pid'), 'utf8').catch(() => '')).trim());
    if (!owner) continue;
    try {
      process.kill(owner, 0);
    } catch {
      // Its nodes' containers, mounts and cgroups outlive it (shims are daemons by design).
      for (const node of await readdir(path.join(dir, 'nodes')).catch(() => [] as string[])) {
        const state = await readFile(path.join(dir, 'nodes', node, 'state.json'), 'utf8').catch(() => '');
        if (state) await cleanUpNode(JSON.parse(state) as NodeState);
      }
      await rm(dir, { recursive: true, force: true });
    }
  }
  await removeAbandonedNodeNetwork();
}

export async function startLocalCluster(options: LocalClusterOptions = {}): Promise<LocalCluster> {
  const log = logger('local-cluster');
  const build = await ensureControlPlane();
  await removeAbandonedWorkDirs();
  const workDir = options.workDir ?? (await mkdtemp(path.join(os.tmpdir(), WORK_DIR_PREFIX)));
  await writeFile(path.join(workDir, 'owner.pid'), `${process.pid}\n`);
  const removeWorkDir = !options.workDir;
  const dirs = { pki: path.join(workDir, 'pki'), etcd: path.join(workDir, 'etcd'), logs: path.join(workDir, 'logs') };
  await Promise.all(Object.values(dirs).map((d) => mkdir(d, { recursive: true })));
  const procs = new ProcessGroup(dirs.logs);
  const bin = (b: ControlPlaneBinary): string => build.bin(b);
  const nodeCount = options.nodes ?? 0;
  const runningNodes: RunningNode[] = [];
  let network: NodeNetwork | undefined;
  const exitedEarly = (name: string, child: ChildProcess) => async (): Promise<string | undefined> =>
    child.exitCode !== null || child.signalCode !== null ? `${name} exited (${child.exitCode ?? child.signalCode}):\n${await procs.logTail(name)}` : undefined;

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopping ??= stopEverything());
  const stopEverything = async (): Promise<void> => {
    for (const n of [...runningNodes].reverse()) await n.stop().catch((err: Error) => log.warn('stopping a node failed', { node: n.node.name, error: err.message }));
    await procs.stopAll();
    await network?.remove();
    if (removeWorkDir) await rm(workDir, { recursive: true, force: true });
  };

  try {
    const started = Date.now();
    const nodeBuild = nodeCount > 0 ? await ensureNodeBinaries() : undefined;
    const images = nodeCount > 0 ? (options.images ?? (await builtImages())) : undefined;
    if (nodeCount > 0) network = await createNodeNetwork(POD_CIDR);
    const [etcdClient, etcdPeer, apiPort] = [await freePort(), await freePort(), await freePort()];
    const hostIPs = [...hostAddresses(), ...(network ? [network.hostIP] : [])];
    const pki = await createPki(dirs.pki, ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc', '127.0.0.1', '10.96.0.1', ...hostIPs, ...(options.extraSANs ?? [])]);

    const etcdUrl = `http://127.0.0.1:${etcdClient}`;
    const etcd = procs.start('etcd', bin('etcd'), [
      '--name=local',
      `--data-dir=${dirs.etcd}`,
      `--listen-client-urls=${etcdUrl}`,
      `--advertise-client-urls=${etcdUrl}`,
      `--listen-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-advertise-peer-urls=http://127.0.0.1:${etcdPeer}`,
      `--initial-cluster=local=http://127.0.0.1:${etcdPeer}`,
      // A throwaway store: durability is not worth the fsync latency here.
      '--unsafe-no-fsync',
      '--log-level=warn',
    ]);
    const etcdHealthy = (): Promise<boolean> => httpOk(`${etcdUrl}/health`);
    await waitFor('etcd', etcdHealthy, 30_000, exitedEarly('etcd', etcd));

    // Pods reach the API server through the kubernetes Service: with nodes, at the host's end of their network.
    const advertise = network?.hostIP ?? hostIPs.find((a) => net.isIPv4(a));
    if (network) await issueCertificate(dirs.pki, 'apiserver-kubelet-client', '/O=system:masters/CN=kube-apiserver-kubelet-client', 'client');
    const kubeletClientFlags = network
      ? [
          // kubectl logs/exec: the API server dials the node's InternalIP; resolving node names would ask the machine's resolver.
          '--kubelet-preferred-address-types=InternalIP',
          `--kubelet-certificate-authority=${pki.caCert}`,
          `--kubelet-client-certificate=${path.join(dirs.pki, 'apiserver-kubelet-client.crt')}`,
          `--kubelet-client-key=${path.join(dirs.pki, 'apiserver-kubelet-client.key')}`,
        ]
      : [];
    const apiserver = procs.start('kube-apiserver', bin('kube-apiserver'), [
      `--etcd-servers=${etcdUrl}`,
      // All host addresses: node agents in network namespaces reach it over a veth.
      '--bind-address=0.0.0.0',
      `--secure-port=${apiPort}`,
      ...(advertise ? [`--advertise-address=${advertise}`] : []),
      `--tls-cert-file=${pki.servingCert}`,
      `--tls-private-key-file=${pki.servingKey}`,
      `--client-ca-file=${pki.caCert}`,
      // Front-proxy settings that controllers' delegated authentication expects to find.
      `--requestheader-client-ca-file=${pki.caCert}`,
      '--requestheader-allowed-names=front-proxy-client',
      '--requestheader-username-headers=X-Remote-User',
      '--requestheader-group-headers=X-Remote-Group',
      '--requestheader-extra-headers-prefix=X-Remote-Extra-',
      `--service-account-issuer=https://kubernetes.default.svc`,
      `--service-account-key-file=${pki.serviceAccountPub}`,
      `--service-account-signing-key-file=${pki.serviceAccountKey}`,
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      '--authorization-mode=Node,RBAC',
      '--allow-privileged=true',
      '--endpoint-reconciler-type=lease',
      ...kubeletClientFlags,
      '--v=1',
    ]);
    const server = `https://127.0.0.1:${apiPort}`;
    const tls = { ca: pki.caPem, cert: pki.admin.cert, key: pki.admin.key };
    const apiserverReady = (): Promise<boolean> => httpOk(`${server}/readyz`, tls);
    await waitFor('kube-apiserver', apiserverReady, 90_000, exitedEarly('kube-apiserver', apiserver));

    const kubeconfig = path.join(workDir, 'kubeconfig');
    const adminYaml = kubeconfigYaml(server, pki.caPem, 'extbackend-admin', pki.admin);
    await writeFile(kubeconfig, adminYaml, { mode: 0o600 });
    const kcmKubeconfig = path.join(dirs.pki, 'controller-manager.kubeconfig');
    await writeFile(kcmKubeconfig, kubeconfigYaml(server, pki.caPem, 'system:kube-controller-manager', pki.controllerManager), { mode: 0o600 });

    const kcmPort = await freePort();
    const kcm = procs.start('kube-controller-manager', bin('kube-controller-manager'), [
      `--kubeconfig=${kcmKubeconfig}`,
      `--authentication-kubeconfig=${kcmKubeconfig}`,
      `--authorization-kubeconfig=${kcmKubeconfig}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${kcmPort}`,
      `--controllers=${[...CONTROLLERS_WITHOUT_NODES, ...(network ? CONTROLLERS_FOR_NODES : [])].join(',')}`,
      ...(network ? ['--allocate-node-cidrs=true', '--node-cidr-mask-size=24', '--node-monitor-grace-period=20s'] : []),
      `--service-account-private-key-file=${pki.serviceAccountKey}`,
      `--root-ca-file=${pki.caCert}`,
      '--use-service-account-credentials=true',
      `--service-cluster-ip-range=${SERVICE_CIDR}`,
      `--cluster-cidr=${POD_CIDR}`,
      '--leader-elect=false',
      // Fast garbage collection and namespace deletion keep the tests quick.
      '--concurrent-gc-syncs=20',
      '--concurrent-namespace-syncs=10',
      '--v=1',
    ]);
    const kcmHealthy = (): Promise<boolean> => httpOk(`https://127.0.0.1:${kcmPort}/healthz`, { ca: pki.caPem, rejectUnauthorized: false });
    await waitFor('kube-controller-manager', kcmHealthy, 60_000, exitedEarly('kube-controller-manager', kcm));

    const healthy: Record<ControlPlaneComponent, () => Promise<boolean>> = { etcd: etcdHealthy, 'kube-apiserver': apiserverReady, 'kube-controller-manager': kcmHealthy };
    const stopComponent = (component: ControlPlaneComponent, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> => procs.stop(component, signal);
    const startComponent = async (component: ControlPlaneComponent): Promise<void> => {
      const child = procs.restart(component);
      await waitFor(component, healthy[component], 90_000, exitedEarly(component, child));
    };

    const kubectlApply = async (manifest: string): Promise<void> => {
      await runKubectl(bin('kubectl'), ['--kubeconfig', kubeconfig, 'apply', '-f', '-'], manifest);
    };
    if (network && nodeBuild && images) {
      await issueCertificate(dirs.pki, 'scheduler', '/CN=system:kube-scheduler', 'client');
      const schedulerKubeconfig = path.join(dirs.pki, 'scheduler.kubeconfig');
      await writeFile(schedulerKubeconfig, kubeconfigYaml(server, pki.caPem, 'system:kube-scheduler', { cert: await readFile(path.join(dirs.pki, 'scheduler.crt'), 'utf8'), key: await readFile(path.join(dirs.pki, 'scheduler.key'), 'utf8') }), { mode: 0o600 });
      const schedulerPort = await freePort();
      const scheduler = procs.start('kube-scheduler', nodeBuild.bin('kube-scheduler'), [
        `--kubeconfig=${schedulerKubeconfig}`,
        `--authentication-kubeconfig=${schedulerKubeconfig}`,
        `--authorization-kubeconfig=${schedulerKubeconfig}`,
        '--bind-address=127.0.0.1',
        `--secure-port=${schedulerPort}`,
        '--leader-elect=false',
        '--v=1',
      ]);
      await waitFor('kube-scheduler', () => httpOk(`https://127.0.0.1:${schedulerPort}/healthz`, { rejectUnauthorized: false }), 60_000, exitedEarly('kube-scheduler', scheduler));

      // CoreDNS in the router namespace, reaching the API server over the host link.
      const dnsKubeconfig = path.join(dirs.pki, 'coredns.kubeconfig');
      await writeFile(dnsKubeconfig, adminYaml.replace(server, `https://${network.hostIP}:${apiPort}`), { mode: 0o600 });
      const corefilePath = path.join(workDir, 'Corefile');
      await writeFile(corefilePath, corefile(network.routerIP, dnsKubeconfig));
      const coredns = procs.start('coredns', 'nsenter', [`--net=/run/netns/${ROUTER_NS}`, '--', nodeBuild.bin('coredns'), '-conf', corefilePath]);
      await waitForClusterDns(network.routerIP, coredns);
      await kubectlApply(kubeDnsManifest(network.routerIP));

      const sysctls = readKubeletSysctls();
      const nodeServer = `https://${network.hostIP}:${apiPort}`;
      for (let index = 0; index < nodeCount; index++) {
        runningNodes.push(
          await startNode({
            index,
            workDir,
            server: nodeServer,
            pki,
            build: nodeBuild,
            kubeProxy: bin('kube-proxy'),
            network,
            images,
            clusterCIDR: POD_CIDR,
            clusterId: path.basename(workDir).replace(WORK_DIR_PREFIX, ''),
            sysctls,
            logDir: dirs.logs,
          }),
        );
      }
      await waitForNodes(bin('kubectl'), kubeconfig, runningNodes);
      await writeFile(path.join(workDir, 'nodes.json'), JSON.stringify(runningNodes.map((n) => n.node), null, 2) + '\n');
    }

    log.info('local control plane ready', { server, version: build.kubernetesVersion, seconds: ((Date.now() - started) / 1000).toFixed(1) });
    return {
      kubeconfig,
      kubeconfigYaml: adminYaml,
      server,
      apiserverPort: apiPort,
      version: build.kubernetesVersion,
      build,
      workDir,
      pki,
      nodes: runningNodes.map((n) => n.node),
      ...(network ? { nodeNetwork: network } : {}),
      etcdUrl,
      stopComponent,
      startComponent,
      stop,
    };
  } catch (err) {
    await stop();
    throw err;
  }
}

async function builtImages(): Promise<NodeImages> {
  const [image, pause] = await Promise.all([ensureImage(), ensurePauseImage()]);
  return { archives: [image.archive, pause.archive], sandboxImage: pause.name };
}

async function runKubectl(kubectl: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(kubectl, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`kubectl ${args.join(' ')}: ${err.trim()}`))));
    child.stdin.end(input ?? '');
  });
}

/** Waits for every node to register, gives each its CNI configuration for the pod CIDR it was allocated, then waits for Ready. */
async function waitForNodes(kubectl: string, kubeconfig: string, nodes: RunningNode[]): Promise<void> {
  interface NodeView {
    metadata: { name: string };
    spec?: { podCIDR?: string };
    status?: { conditions?: { type: string; status: string; message?: string }[] };
  }
  const list = async (): Promise<NodeView[]> => (JSON.parse(await runKubectl(kubectl, ['--kubeconfig', kubeconfig, 'get', 'nodes', '-o', 'json'])) as { items: NodeView[] }).items;
  const pending = new Set(nodes.map((n) => n.node.name));
  let last: NodeView[] = [];
  await waitFor('nodes to register and get pod CIDRs', async () => {
    last = await list();
    for (const view of last) {
      const running = nodes.find((n) => n.node.name === view.metadata.name);
      if (running && view.spec?.podCIDR && pending.has(view.metadata.name)) {
        await running.setPodCIDR(view.spec.podCIDR);
        pending.delete(view.metadata.name);
      }
    }
    return pending.size === 0;
  }, 120_000);
  await waitFor('nodes to become Ready', async () => {
    last = await list();
    return nodes.every((n) => last.find((v) => v.metadata.name === n.node.name)?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'));
  }, 120_000).catch((err: Error) => {
    const why = last.map((v) => `${v.metadata.name}: ${v.status?.conditions?.find((c) => c.type === 'Ready')?.message ?? 'no Ready condition'}`).join('; ');
    throw new Error(`${err.message} (${why})`);
  });
}

/** True when the file exists and names an API server that answers /readyz. */
export async function clusterAnswers(kubeconfigPath: string): Promise<boolean> {
  if (!existsSync(kubeconfigPath)) return false;
  const text = await readFile(kubeconfigPath, 'utf8');
  const field = (k: string): string | undefined => new RegExp(`${k}: (\\S+)`).exec(text)?.[1];
  const server = field('server');
  const b64 = (k: string): string | undefined => {
    const v = field(k);
    return v ? Buffer.from(v, 'base64').toString() : undefined;
  };
  if (!server) return false;
  return httpOk(`${server}/readyz`, { ca: b64('certificate-authority-data'), cert: b64('client-certificate-data'), key: b64('client-key-data') });
}
