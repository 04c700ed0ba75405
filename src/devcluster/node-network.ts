// The network the local cluster's real nodes live on, all in network namespaces:
//
//   host ── router ─┬─ node-0 (kubelet, containerd, kube-proxy, pods; default route into dead end 0)
//        (CoreDNS)  ├─ node-1 ...
//                   └─ outside hosts for tests (attachHost)
//
// Addresses come from 198.19.0.0/18 (inside the benchmarking range 198.18.0.0/15, never
// routed on the internet): nodes share 198.19.0.0/24 with the router (198.19.0.1), outside
// hosts get /30s from 198.19.16.0/20, the host's link to the router is 198.19.63.252/30.
// The host routes only that /18 and the pod CIDR through its link; the router has no
// default route and node namespaces' default routes lead into namespaces that drop
// everything, so no packet of the cluster's leaves this machine. Pod CIDRs are routed
// by the router to their nodes (host-gw style), so nothing is masqueraded on the way.
//
// One such network per machine (its addresses are fixed): a lock file says who owns it.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { systemCommand } from '../net/system-command.ts';

const run = promisify(execFile);

export const NODE_NETWORK = '198.19.0.0/18';
export const NODE_SUBNET_PREFIX = '198.19.0';
export const ROUTER_IP = '198.19.0.1';
export const HOST_LINK_IP = '198.19.63.253';
const ROUTER_HOST_SIDE_IP = '198.19.63.254';
const HOST_LINK = 'xbk-host';
const OUTSIDE_HOSTS_BASE = (198 << 24) | (19 << 16) | (16 << 8); // 198.19.16.0/20: 1024 /30s
const DEAD_END_BASE = (198 << 24) | (19 << 16) | (62 << 8); // 198.19.62.0/24, /30 per node (inside each node only)

export const ROUTER_NS = 'xbk-router';
const NS_PREFIX = 'xbk-';

export interface NodeNetworkState {
  owner: number;
  namespaces: string[];
  hostLink: string;
  hostRoutes: string[];
}

const LOCK = path.join(os.tmpdir(), 'extbackend-node-network.json');

export async function ip(...args: string[]): Promise<string> {
  try {
    return (await run(systemCommand('ip'), args)).stdout;
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${e.stderr?.trim() || e.message}`);
  }
}

function v4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join('.');
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function readLock(): NodeNetworkState | undefined {
  if (!existsSync(LOCK)) return undefined;
  try {
    return JSON.parse(readFileSync(LOCK, 'utf8')) as NodeNetworkState;
  } catch {
    return undefined;
  }
}

/** Removes what a network's state file lists; each step tolerates what is already gone. */
export async function removeNodeNetwork(state: NodeNetworkState): Promise<void> {
  for (const route of state.hostRoutes) await ip('route', 'del', route).catch(() => undefined);
  for (const ns of [...state.namespaces].reverse()) await ip('netns', 'del', ns).catch(() => undefined);
  await ip('link', 'del', state.hostLink).catch(() => undefined);
}

export interface OutsideHost {
  name: string;
  ip: string;
}

export interface NodeNetwork {
  hostIP: string;
  routerIP: string;
  /** The network namespace of node `index`, with eth0 on the node subnet and its default route into a dead end. */
  addNode(index: number): Promise<{ netns: string; ip: string }>;
  /** Pods of `podCIDR` live on the node with `nodeIP`. */
  routePodCIDR(podCIDR: string, nodeIP: string): Promise<void>;
  /** A namespace outside the cluster, attached to the router (for outside hosts in tests and demos). */
  attachHost(label: string): Promise<OutsideHost>;
  remove(): Promise<void>;
}

/**
 * Creates the node network. Fails if another live process owns it; takes over (after
 * removing) one whose owner died.
 */
export async function createNodeNetwork(podCIDR: string): Promise<NodeNetwork> {
  const previous = readLock();
  if (previous && previous.owner !== process.pid && alive(previous.owner)) {
    throw new Error(`the local nodes' network (${NODE_NETWORK}) is in use by process ${previous.owner} (another local cluster with nodes); stop it first (npm run cluster:down)`);
  }
  if (previous) await removeNodeNetwork(previous);
  const state: NodeNetworkState = { owner: process.pid, namespaces: [], hostLink: HOST_LINK, hostRoutes: [NODE_NETWORK, podCIDR] };
  const save = (): void => writeFileSync(LOCK, JSON.stringify(state));
  save();
  const addNamespace = async (name: string): Promise<void> => {
    state.namespaces.push(name);
    save();
    await ip('netns', 'add', name);
    await ip('-n', name, 'link', 'set', 'lo', 'up');
  };
  let outsideHosts = 0;

  try {
    await addNamespace(ROUTER_NS);
    await ip('netns', 'exec', ROUTER_NS, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.send_redirects=0', 'net.ipv4.conf.default.send_redirects=0');
    await ip('-n', ROUTER_NS, 'link', 'add', 'nodes', 'type', 'bridge');
    await ip('-n', ROUTER_NS, 'addr', 'add', `${ROUTER_IP}/24`, 'dev', 'nodes');
    await ip('-n', ROUTER_NS, 'link', 'set', 'nodes', 'up');
    await ip('link', 'add', HOST_LINK, 'type', 'veth', 'peer', 'name', 'to-host', 'netns', ROUTER_NS);
    await ip('addr', 'add', `${HOST_LINK_IP}/30`, 'dev', HOST_LINK);
    await ip('link', 'set', HOST_LINK, 'up');
    await ip('-n', ROUTER_NS, 'addr', 'add', `${ROUTER_HOST_SIDE_IP}/30`, 'dev', 'to-host');
    await ip('-n', ROUTER_NS, 'link', 'set', 'to-host', 'up');
    for (const route of state.hostRoutes) await ip('route', 'replace', route, 'via', ROUTER_HOST_SIDE_IP, 'dev', HOST_LINK);
  } catch (err) {
    await removeNodeNetwork(state);
    rmSync(LOCK, { force: true });
    throw err;
  }

  return {
    hostIP: HOST_LINK_IP,
    routerIP: ROUTER_IP,
    async addNode(index) {
      const netns = `${NS_PREFIX}node-${index}`;
      const nodeIP = `${NODE_SUBNET_PREFIX}.${10 + index}`;
      await addNamespace(netns);
      // Nodes forward (NodePorts, pods); the agent's and kube-proxy's rules do the rest.
      await ip('netns', 'exec', netns, 'sysctl', '-qw', 'net.ipv4.ip_forward=1');
      const port = `node${index}`;
      await ip('-n', netns, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', port, 'netns', ROUTER_NS);
      await ip('-n', netns, 'addr', 'add', `${nodeIP}/24`, 'dev', 'eth0');
      await ip('-n', netns, 'link', 'set', 'eth0', 'up');
      await ip('-n', ROUTER_NS, 'link', 'set', port, 'master', 'nodes', 'up');
      await ip('-n', netns, 'route', 'add', NODE_NETWORK, 'via', ROUTER_IP);
      await ip('-n', netns, 'route', 'add', podCIDR, 'via', ROUTER_IP);
      const dead = `${NS_PREFIX}dead-${index}`;
      await addNamespace(dead);
      const deadNet = DEAD_END_BASE + index * 4;
      await ip('-n', netns, 'link', 'add', 'dead', 'type', 'veth', 'peer', 'name', 'sink', 'netns', dead);
      await ip('-n', netns, 'addr', 'add', `${v4(deadNet + 1)}/30`, 'dev', 'dead');
      await ip('-n', netns, 'link', 'set', 'dead', 'up');
      await ip('-n', dead, 'addr', 'add', `${v4(deadNet + 2)}/30`, 'dev', 'sink');
      await ip('-n', dead, 'link', 'set', 'sink', 'up');
      await ip('-n', netns, 'route', 'add', 'default', 'via', v4(deadNet + 2));
      return { netns, ip: nodeIP };
    },
    async routePodCIDR(cidr, nodeIP) {
      await ip('-n', ROUTER_NS, 'route', 'replace', cidr, 'via', nodeIP);
    },
    async attachHost(label) {
      const index = outsideHosts++;
      const name = `${NS_PREFIX}${label.slice(0, 12)}-${index}`;
      const base = OUTSIDE_HOSTS_BASE + index * 4;
      const routerSide = `h${index}`;
      await addNamespace(name);
      await ip('-n', name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', routerSide, 'netns', ROUTER_NS);
      await ip('-n', name, 'addr', 'add', `${v4(base + 2)}/30`, 'dev', 'eth0');
      await ip('-n', name, 'link', 'set', 'eth0', 'up');
      await ip('-n', ROUTER_NS, 'addr', 'add', `${v4(base + 1)}/30`, 'dev', routerSide);
      await ip('-n', ROUTER_NS, 'link', 'set', routerSide, 'up');
      await ip('-n', name, 'route', 'add', 'default', 'via', v4(base + 1));
      return { name, ip: v4(base + 2) };
    },
    async remove() {
      await removeNodeNetwork(state);
      if (readLock()?.owner === process.pid) rmSync(LOCK, { force: true });
    },
  };
}

/** Removes the network of a cluster whose owner died without cleaning up. */
export async function removeAbandonedNodeNetwork(): Promise<void> {
  const previous = readLock();
  if (!previous || alive(previous.owner)) return;
  await removeNodeNetwork(previous);
  rmSync(LOCK, { force: true });
}
