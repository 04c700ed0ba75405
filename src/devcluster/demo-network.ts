// The demo's data plane, when run as root: one network namespace as a node (running
// the agent) and one holding every sample address (a small server answering with the
// address it was reached on). Packets the agent fails to translate die in a dead-end
// namespace; the host gets one route, to the node's /30 only.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import { systemCommand } from '../net/system-command.ts';

const run = promisify(execFile);
const ip = async (...args: string[]): Promise<string> => (await run(systemCommand('ip'), args)).stdout;

export interface DemoNetwork {
  node: string;
  /** The host's address towards the node: how the agent reaches the API server. */
  hostIP: string;
  nodeIP: string;
  spawnInNode(command: string, args: string[], env?: NodeJS.ProcessEnv): ChildProcess;
  execInNode(command: string, args: string[]): Promise<string>;
  destroy(): Promise<void>;
}

/** A small server for the backend namespace: every connection gets "<local address>:<port>". */
const SERVER = `
const net = require('node:net');
for (const port of process.argv.slice(1).map(Number)) {
  net.createServer((s) => { s.on('error', () => {}); s.end('HTTP/1.0 200 OK\\r\\ncontent-type: text/plain\\r\\n\\r\\n' + s.localAddress + ':' + port + '\\n'); }).listen(port, '0.0.0.0');
}`;

export async function createDemoNetwork(addresses: string[], ports: number[]): Promise<DemoNetwork> {
  const id = randomBytes(2).toString('hex');
  const node = `xbdemo-node-${id}`;
  const backends = `xbdemo-hosts-${id}`;
  const dead = `xbdemo-dead-${id}`;
  const hostIf = `xbdh${id}`;
  const third = 240 + (parseInt(id, 16) % 16);
  const fourth = (parseInt(id, 16) % 63) * 4;
  const hostIP = `198.19.${third}.${fourth + 1}`;
  const nodeIP = `198.19.${third}.${fourth + 2}`;
  const procs: ChildProcess[] = [];
  const destroy = async (): Promise<void> => {
    for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
    for (const ns of [node, backends, dead]) await ip('netns', 'del', ns).catch(() => undefined);
    await ip('link', 'del', hostIf).catch(() => undefined);
  };
  try {
    for (const ns of [node, backends, dead]) {
      await ip('netns', 'add', ns);
      await ip('-n', ns, 'link', 'set', 'lo', 'up');
    }
    await run(systemCommand('ip'), ['netns', 'exec', node, systemCommand('sysctl'), '-qw', 'net.ipv4.ip_forward=1']);
    // host <-> node, for the API server
    await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'to-host', 'netns', node);
    await ip('addr', 'add', `${hostIP}/30`, 'dev', hostIf);
    await ip('link', 'set', hostIf, 'up');
    await ip('-n', node, 'addr', 'add', `${nodeIP}/30`, 'dev', 'to-host');
    await ip('-n', node, 'link', 'set', 'to-host', 'up');
    // node <-> the sample hosts
    await ip('-n', node, 'link', 'add', 'to-hosts', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', backends);
    await ip('-n', node, 'addr', 'add', '198.19.255.1/30', 'dev', 'to-hosts');
    await ip('-n', node, 'link', 'set', 'to-hosts', 'up');
    await ip('-n', backends, 'addr', 'add', '198.19.255.2/30', 'dev', 'eth0');
    for (const a of addresses) await ip('-n', backends, 'addr', 'add', `${a}/32`, 'dev', 'eth0');
    await ip('-n', backends, 'link', 'set', 'eth0', 'up');
    await ip('-n', backends, 'route', 'add', 'default', 'via', '198.19.255.1');
    for (const a of addresses) await ip('-n', node, 'route', 'add', `${a}/32`, 'via', '198.19.255.2');
    // node <-> dead end: the default route, so nothing untranslated leaves the machine
    await ip('-n', node, 'link', 'add', 'dead', 'type', 'veth', 'peer', 'name', 'sink', 'netns', dead);
    await ip('-n', node, 'addr', 'add', '198.19.254.1/30', 'dev', 'dead');
    await ip('-n', node, 'link', 'set', 'dead', 'up');
    await ip('-n', dead, 'addr', 'add', '198.19.254.2/30', 'dev', 'sink');
    await ip('-n', dead, 'link', 'set', 'sink', 'up');
    await ip('-n', node, 'route', 'add', 'default', 'via', '198.19.254.2');
    const server = spawn(systemCommand('ip'), ['netns', 'exec', backends, process.execPath, '-e', SERVER, ...ports.map(String)], { stdio: 'ignore' });
    procs.push(server);
  } catch (err) {
    await destroy();
    throw err;
  }
  return {
    node,
    hostIP,
    nodeIP,
    spawnInNode: (command, args, env) => {
      const child = spawn(systemCommand('ip'), ['netns', 'exec', node, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: env ?? process.env });
      procs.push(child);
      return child;
    },
    execInNode: async (command, args) => (await run(systemCommand('ip'), ['netns', 'exec', node, command, ...args])).stdout,
    destroy,
  };
}
