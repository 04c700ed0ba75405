// System tools by absolute path: npm puts node_modules/.bin first on PATH, and an
// npm package may ship a binary named like a system tool (ava depends on one called
// `nft`, for instance).
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';

const DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin', '/usr/local/sbin', '/usr/local/bin'];
const cache = new Map<string, string>();

export function systemCommand(name: string): string {
  let found = cache.get(name);
  if (!found) {
    found = DIRS.map((d) => path.join(d, name)).find((p) => existsSync(p)) ?? name;
    cache.set(name, found);
  }
  return found;
}

/**
 * Runs a system tool (by absolute path), optionally feeding `input` on stdin; resolves
 * with stdout, rejects with the exit code and stderr in the message (and `code`).
 */
export function runTool(name: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(systemCommand(name), args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(Buffer.concat(out).toString()) : reject(Object.assign(new Error(`${name} ${args.join(' ')} failed (${code}): ${err.trim()}`), { code }))));
    // A command that fails early may close its stdin first: the exit code reports that.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(input);
  });
}
