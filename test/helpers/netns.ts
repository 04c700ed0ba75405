// Network namespaces as outside hosts: each joined to the host by its own veth pair
// on a random /30 from 198.18.0.0/15 (the benchmarking range, never routed on the
// internet). Traffic to a backend goes only through its veth, and tests check that
// route before sending anything.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { promisify } from 'node:util';
import type { ExecutionContext } from 'ava';
import { systemCommand } from '../../src/net/system-command.ts';

const run = promisify(execFile);

export async function ip(...args: string[]): Promise<string> {
  try {
    return (await run(systemCommand('ip'), args)).stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string; code?: string };
    if (e.code === 'ENOENT') throw new Error('the `ip` command (iproute2) is needed for network-namespace tests');
    // Our own programs log their errors to stdout: show it when stderr is empty.
    throw new Error(`ip ${args.join(' ')}: ${e.stderr?.trim() || e.stdout?.trim().slice(-2000) || e.message}`);
  }
}

export interface BackendHost {
  name: string;
  hostIf: string;
  hostIP: string;
  /** The backend's address, reachable from the host through hostIf only. */
  ip: string;
  /** Starts a process inside the namespace; it is killed when the test ends. */
  spawn(command: string, args: string[], options?: { env?: NodeJS.ProcessEnv }): ChildProcess;
  /** Runs a system tool inside the namespace and returns its output. */
  exec(command: string, args: string[]): Promise<string>;
  destroy(): Promise<void>;
}

function v4(n: number): string {
  return [24, 16, 8, 0].map((s) => (n >>> s) & 0xff).join('.');
}

/** Fails unless `address` is routed out of `iface` (never the host's default route). */
export async function assertRouteVia(address: string, iface: string): Promise<void> {
  const route = await ip('route', 'get', address);
  if (!new RegExp(`\\bdev ${iface}\\b`).test(route)) throw new Error(`refusing to send traffic: the route to ${address} is "${route.trim()}", not through ${iface}`);
}

/** A namespace on a /30 of its own; `t` tears it down when the test ends (else call destroy()). */
export async function createBackendHost(t?: ExecutionContext): Promise<BackendHost> {
  const id = randomBytes(3).toString('hex');
  const name = `xbt-${id}`;
  const hostIf = `xbh${id}`;
  const nsIf = `xbn${id}`;
  const base = ((198 << 24) | (18 << 16)) + 4 * randomInt(0, 32768); // a /30 inside 198.18.0.0/15
  const hostIP = v4(base + 1);
  const nsIP = v4(base + 2);
  const procs: ChildProcess[] = [];
  await ip('netns', 'add', name);
  const destroy = async (): Promise<void> => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    await ip('netns', 'del', name).catch(() => undefined);
    await ip('link', 'del', hostIf).catch(() => undefined);
  };
  t?.teardown(destroy);
  await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
  await ip('link', 'set', nsIf, 'netns', name);
  await ip('addr', 'add', `${hostIP}/30`, 'dev', hostIf);
  await ip('link', 'set', hostIf, 'up');
  await ip('-n', name, 'addr', 'add', `${nsIP}/30`, 'dev', nsIf);
  await ip('-n', name, 'link', 'set', nsIf, 'up');
  await ip('-n', name, 'link', 'set', 'lo', 'up');
  await ip('-n', name, 'route', 'add', 'default', 'via', hostIP);
  await assertRouteVia(nsIP, hostIf);
  return {
    name,
    hostIf,
    hostIP,
    ip: nsIP,
    spawn(command, args, options = {}) {
      const child = spawn('ip', ['netns', 'exec', name, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
      procs.push(child);
      return child;
    },
    exec: (command, args) => ip('netns', 'exec', name, systemCommand(command), ...args),
    destroy,
  };
}
