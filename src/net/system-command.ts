// System tools by absolute path: npm puts node_modules/.bin first on PATH, and an
// npm package may ship a binary named like a system tool (ava depends on one called
// `nft`, for instance).
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
