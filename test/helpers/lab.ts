// A small data-plane lab of network namespaces, for agent tests with real traffic:
//
//   host ── R (router) ─┬─ node-N  (agent runs here; default route into a dead end D-N)
//                       ├─ backend-I (servers answering with their identity)
//                       └─ client   (outside every node)
//
// Each lab owns a /23 of 198.19.128.0/17 and the IPv6 /48 fd78:6265:<slot>:: (claimed
// with a lock directory so parallel test processes never share one); the host routes
// only those, through its own veth to R. Node namespaces' default routes (both
// families) go to a namespace that drops everything, so a packet the agent failed to
// translate (to a cluster IP, say) dies there instead of leaving the machine.
import { mkdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import type { ChildProcess } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { systemCommand } from '../../src/net/system-command.ts';
import { assertRouteVia, ip } from './netns.ts';
import { spawn } from 'node:child_process';

export interface LabHost {
  name: string; // namespace
  ip: string; // its address towards R
  ip6: string; // its IPv6 address towards R
  spawn(command: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcess;
  exec(command: string, args: string[]): Promise<string>;
}

export interface Lab {
  /** The host's address towards R: what agents use to reach the API server. */
  hostIP: string;
  node(label: string): Promise<LabHost>;
  backend(label: string): Promise<LabHost>;
  client(label: string): Promise<LabHost>;
  /**
   * R sends `from`'s packets for `to` through `via` instead of straight there: the
   * return path externalTrafficPolicy Local needs (replies must pass the node that
   * translated the request, since the client's address was kept).
   */
  replyVia(from: LabHost, to: LabHost, via: LabHost): Promise<void>;
}

const LOCK_ROOT = path.join(os.tmpdir(), 'extbackend-labs');

function claimSlot(): number {
  mkdirSync(LOCK_ROOT, { recursive: true });
  const order = Array.from({ length: 64 }, (_, i) => i).sort(() => Math.random() - 0.5);
  for (const slot of order) {
    const dir = path.join(LOCK_ROOT, String(slot));
    try {
      mkdirSync(dir);
    } catch {
      // Taken: reclaim it only if its owner is gone.
      const owner = Number(readFileSync(path.join(dir, 'pid'), 'utf8').trim() || 0);
      try {
        process.kill(owner, 0);
        continue;
      } catch {
        /* owner gone: reuse */
      }
    }
    writeFileSync(path.join(dir, 'pid'), String(process.pid));
    return slot;
  }
  throw new Error('no free data-plane lab slot (64 in use?)');
}

export async function createLab(t: ExecutionContext): Promise<Lab> {
  const slot = claimSlot();
  const third = 128 + slot * 2; // this lab's /23 is 198.19.<third>.0/23
  const prefix = `198.19.${third}.0/23`;
  const prefix6 = `fd78:6265:${slot.toString(16)}::/48`;
  // Canonical text (as sockets report addresses): "fd78:6265:1::2", not "fd78:6265:1:0::2".
  const v6 = (subnet: number, host: number): string => new URL(`http://[fd78:6265:${slot.toString(16)}:${subnet.toString(16)}::${host}]/`).hostname.slice(1, -1);
  const id = randomBytes(2).toString('hex');
  const router = `xbr-${id}`;
  const namespaces: string[] = [router];
  const links: string[] = [];
  const procs: ChildProcess[] = [];
  let next = 0; // /30 index inside the /23 (0..125), the last one is the host link
  /** The next /30 and its IPv6 /64: [router side, host side, router side v6, host side v6]. */
  const subnet = (): [string, string, string, string] => {
    const index = next++;
    const addr = (n: number) => `198.19.${third + Math.floor(n / 256)}.${n % 256}`;
    return [addr(index * 4 + 1), addr(index * 4 + 2), v6(index, 1), v6(index, 2)];
  };
  // IPv6 addresses are usable at once (no duplicate-address detection on these links).
  const addr6 = (ns: string | undefined, address: string, dev: string): Promise<string> => ip(...(ns ? ['-n', ns] : []), '-6', 'addr', 'add', `${address}/64`, 'dev', dev, 'nodad');
  let deadEnd = 0;
  let policyRoutes = 0;

  const teardown = async (): Promise<void> => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    for (const ns of namespaces) await ip('netns', 'del', ns).catch(() => undefined);
    for (const l of links) await ip('link', 'del', l).catch(() => undefined);
    await ip('route', 'del', prefix).catch(() => undefined);
    await ip('-6', 'route', 'del', prefix6).catch(() => undefined);
    rmSync(path.join(LOCK_ROOT, String(slot)), { recursive: true, force: true });
  };
  t.teardown(teardown);

  await ip('netns', 'add', router);
  await ip('netns', 'exec', router, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1');
  await ip('-n', router, 'link', 'set', 'lo', 'up');
  // Host <-> R: the last /30 of the /23.
  const hostIf = `xbl${id}`;
  const hostIP = `198.19.${third + 1}.253`;
  const routerHostSide = `198.19.${third + 1}.254`;
  await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'to-host', 'netns', router);
  links.push(hostIf);
  await ip('addr', 'add', `${hostIP}/30`, 'dev', hostIf);
  await ip('link', 'set', hostIf, 'up');
  await ip('-n', router, 'addr', 'add', `${routerHostSide}/30`, 'dev', 'to-host');
  await ip('-n', router, 'link', 'set', 'to-host', 'up');
  await addr6(undefined, v6(0xffff, 1), hostIf);
  await addr6(router, v6(0xffff, 2), 'to-host');
  // replace, not add: a crashed run may have left this slot's route behind.
  await ip('route', 'replace', prefix, 'via', routerHostSide, 'dev', hostIf);
  await ip('-6', 'route', 'replace', prefix6, 'via', v6(0xffff, 2), 'dev', hostIf);
  await assertRouteVia(`198.19.${third}.10`, hostIf);
  await assertRouteVia(v6(1, 2), hostIf);

  const spawnIn = (ns: string) => (command: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcess => {
    const child = spawn('ip', ['netns', 'exec', ns, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
    procs.push(child);
    return child;
  };
  const execIn = (ns: string) => (command: string, args: string[]): Promise<string> => ip('netns', 'exec', ns, command.startsWith('/') ? command : systemCommand(command), ...args);

  /** A namespace attached to R, with its default route either via R or into a dead end. */
  const attach = async (label: string, defaultVia: 'router' | 'dead-end'): Promise<LabHost> => {
    const name = `xb${label.slice(0, 6)}-${id}`;
    namespaces.push(name);
    const [routerIP, hostAddr, routerIP6, hostAddr6] = subnet();
    const rIf = `r-${label.slice(0, 10)}`;
    await ip('netns', 'add', name);
    await ip('-n', name, 'link', 'set', 'lo', 'up');
    await ip('-n', name, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', rIf, 'netns', router);
    await ip('-n', name, 'addr', 'add', `${hostAddr}/30`, 'dev', 'eth0');
    await addr6(name, hostAddr6, 'eth0');
    await ip('-n', name, 'link', 'set', 'eth0', 'up');
    await ip('-n', router, 'addr', 'add', `${routerIP}/30`, 'dev', rIf);
    await addr6(router, routerIP6, rIf);
    await ip('-n', router, 'link', 'set', rIf, 'up');
    if (defaultVia === 'router') {
      await ip('-n', name, 'route', 'add', 'default', 'via', routerIP);
      await ip('-n', name, '-6', 'route', 'add', 'default', 'via', routerIP6);
    } else {
      // A node forwards (as every Kubernetes node must, for NodePorts and pods);
      // everything in the lab and the host link through R, anything else into the dead end.
      await ip('netns', 'exec', name, 'sysctl', '-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1');
      await ip('-n', name, 'route', 'add', prefix, 'via', routerIP);
      await ip('-n', name, '-6', 'route', 'add', prefix6, 'via', routerIP6);
      const dead = `xbd${deadEnd}-${id}`;
      namespaces.push(dead);
      await ip('netns', 'add', dead);
      const d = deadEnd++;
      await ip('-n', name, 'link', 'add', 'dead', 'type', 'veth', 'peer', 'name', 'sink', 'netns', dead);
      await ip('-n', name, 'addr', 'add', `198.19.96.${d * 4 + 1}/30`, 'dev', 'dead');
      await ip('-n', name, 'link', 'set', 'dead', 'up');
      await ip('-n', dead, 'addr', 'add', `198.19.96.${d * 4 + 2}/30`, 'dev', 'sink');
      await ip('-n', dead, 'link', 'set', 'sink', 'up');
      await addr6(name, v6(0xfe00 + d, 1), 'dead');
      await addr6(dead, v6(0xfe00 + d, 2), 'sink');
      await ip('-n', name, 'route', 'add', 'default', 'via', `198.19.96.${d * 4 + 2}`);
      await ip('-n', name, '-6', 'route', 'add', 'default', 'via', v6(0xfe00 + d, 2));
    }
    return { name, ip: hostAddr, ip6: hostAddr6, spawn: spawnIn(name), exec: execIn(name) };
  };

  return {
    hostIP,
    node: (label) => attach(label, 'dead-end'),
    backend: (label) => attach(label, 'router'),
    client: (label) => attach(label, 'router'),
    replyVia: async (from, to, via) => {
      const table = String(100 + policyRoutes++);
      await ip('-n', router, 'route', 'add', to.ip, 'via', via.ip, 'table', table);
      await ip('-n', router, 'rule', 'add', 'from', from.ip, 'to', to.ip, 'lookup', table, 'priority', table);
    },
  };
}
