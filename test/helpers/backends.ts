// Starts test backend servers inside a BackendHost and stops/restarts them.
import { once } from 'node:events';
import path from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { REPO_ROOT } from '../../src/devcluster/build.ts';
import { TIME_SCALE } from './cluster.ts';
import type { BackendHost } from './netns.ts';

export interface RunningServer {
  stop(): Promise<void>;
  start(): Promise<void>;
  signal(sig: NodeJS.Signals): void;
}

/** Resolves once the process prints one of `texts` (stdout or stderr); rejects if it exits first or after 20 s (× TIME_SCALE). */
export async function waitForOutput(child: ChildProcess, texts: string[], what: string): Promise<void> {
  let output = '';
  const limitMs = 20_000 * TIME_SCALE;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: none of ${JSON.stringify(texts)} within ${limitMs / 1000} s: ${output}`)), limitMs);
    const onData = (d: Buffer): void => {
      output += d.toString();
      if (texts.some((t) => output.includes(t))) {
        clearTimeout(timer);
        resolve();
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${what} exited (${code}): ${output}`));
    });
  });
}

/** A process in the host that can be stopped (SIGKILL: the host just dies) and started again. */
export async function runInHost(host: BackendHost, what: string, command: string, args: string[]): Promise<RunningServer> {
  let child: ChildProcess | undefined;
  const start = async (): Promise<void> => {
    child = host.spawn(command, args);
    await waitForOutput(child, ['listening', 'ready to serve client requests'], what);
  };
  await start();
  return {
    start,
    stop: async () => {
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    },
    signal: (sig) => void child?.kill(sig),
  };
}

export function backendServer(host: BackendHost, kind: 'tcp' | 'http' | 'https' | 'grpc', port: number, extra: string[] = []): Promise<RunningServer> {
  const script = path.join(REPO_ROOT, 'test', 'helpers', 'backend-server.ts');
  return runInHost(host, `${kind} server`, process.execPath, ['--disable-warning=ExperimentalWarning', script, '--kind', kind, '--host', host.ip, '--port', String(port), '--identity', host.name, ...extra]);
}
