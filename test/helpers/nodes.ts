// Tests on real nodes: a local cluster of the test's own with kubelet + containerd
// nodes running the project's image, outside hosts on the nodes' network, and clients
// that run inside pods (through `kubectl exec`, so exec streaming is exercised too).
import { spawn, type ChildProcess } from 'node:child_process';
import { startLocalCluster, type LocalCluster } from '../../src/devcluster/cluster.ts';
import { systemCommand } from '../../src/net/system-command.ts';
import { kubectlAt } from './cluster.ts';
import { assertRouteVia, ip, type BackendHost } from './netns.ts';


import { IMAGE_NAME } from '../../src/devcluster/image.ts';

/** A cluster with `count` real nodes and our image on each (the caller stops it). */
export function startNodeCluster(count: number): Promise<LocalCluster> {
  return startLocalCluster({ nodes: count });
}

const processesOf = new WeakMap<LocalCluster, ChildProcess[]>();

/** A host outside the cluster, on the nodes' network (behind the router, like a VM next to the cluster). */
export async function outsideHost(cluster: LocalCluster, label: string): Promise<BackendHost> {
  const network = cluster.nodeNetwork;
  if (!network) throw new Error('the cluster has no nodes');
  const host = await network.attachHost(label);
  await assertRouteVia(host.ip, 'xbk-host');
  const procs = processesOf.get(cluster) ?? [];
  processesOf.set(cluster, procs);
  return {
    name: host.name,
    ip: host.ip,
    hostIf: 'xbk-host',
    hostIP: network.hostIP,
    spawn: (command, args, options = {}) => {
      const child = spawn('ip', ['netns', 'exec', host.name, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
      procs.push(child);
      return child;
    },
    exec: (command, args) => ip('netns', 'exec', host.name, systemCommand(command), ...args),
    destroy: () => stopOutsideHosts(cluster), // the namespaces go with the node network
  };
}

/** Kills what the cluster's outside hosts run (their namespaces go with the cluster). */
export async function stopOutsideHosts(cluster: LocalCluster): Promise<void> {
  for (const child of processesOf.get(cluster) ?? []) {
    if (child.exitCode !== null || child.signalCode !== null) continue;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

export interface Tally {
  /** Answers by the identity the backend answered with. */
  counts: Record<string, number>;
  /** Failed requests by error code. */
  errors: Record<string, number>;
  n: number;
}

// Runs in a pod with `node -e`: sequential HTTP requests, a new connection each.
const CLIENT = `
const http = require('node:http');
const cfg = JSON.parse(process.argv[1]);
const counts = {}, errors = {};
let n = 0;
const add = (m, k) => (m[k] = (m[k] || 0) + 1);
const one = () => new Promise((resolve) => {
  const req = http.get(cfg.url, { agent: false, timeout: cfg.timeoutMs }, (res) => {
    let body = '';
    res.on('data', (d) => (body += d));
    res.on('end', () => { res.statusCode === 200 ? add(counts, body.trim()) : add(errors, 'HTTP ' + res.statusCode); resolve(); });
  });
  req.on('timeout', () => req.destroy(Object.assign(new Error('timeout'), { code: 'TIMEOUT' })));
  req.on('error', (e) => { add(errors, e.code || e.message); resolve(); });
});
(async () => {
  const end = Date.now() + (cfg.durationMs || 0);
  for (;;) {
    await one();
    n++;
    if (cfg.count ? n >= cfg.count : Date.now() >= end) break;
    if (cfg.intervalMs) await new Promise((r) => setTimeout(r, cfg.intervalMs));
  }
  console.log(JSON.stringify({ counts, errors, n }));
})();
`;

export interface RequestPlan {
  url: string;
  /** Either a number of requests or a duration. */
  count?: number;
  durationMs?: number;
  intervalMs?: number;
  timeoutMs?: number;
}

/** Makes requests from inside `pod` and tallies where they landed. */
export async function requestsFromPod(kubeconfig: string, namespace: string, pod: string, plan: RequestPlan): Promise<Tally> {
  const { stdout } = await kubectlAt(kubeconfig, ['-n', namespace, 'exec', pod, '--', 'node', '-e', CLIENT, JSON.stringify({ timeoutMs: 2000, ...plan })]);
  return JSON.parse(stdout.trim().split('\n').pop()!) as Tally;
}

/** A pod on `node` that only idles, as a place to run clients from (our image has Node). */
export function clientPodYaml(namespace: string, name: string, node: string): string {
  return JSON.stringify({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name, namespace, labels: { app: 'e2e-client' } },
    spec: {
      nodeSelector: { 'kubernetes.io/hostname': node },
      terminationGracePeriodSeconds: 1,
      securityContext: { runAsNonRoot: true, runAsUser: 65532, seccompProfile: { type: 'RuntimeDefault' } },
      containers: [
        {
          name: 'client',
          image: IMAGE_NAME,
          imagePullPolicy: 'Never',
          command: ['node', '-e', 'setInterval(() => {}, 1 << 30)'],
          securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
        },
      ],
    },
  });
}
