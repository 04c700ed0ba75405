// `npm start` and `npm test` run this first (prestart, pretest), on whatever Node runs npm —
// on a fresh machine the system's, which may be older than the Node 24 the project needs.
// It installs node_modules (`npm ci`) when it is missing or was installed from another
// package-lock.json, so the script that follows finds Node 24 (node_modules/.bin/node, the
// `node` devDependency) first on npm's PATH. A pre-script and not `setup && node ...` in one
// script: the shell would keep the `node` it found before the install (its command hash).
// Plain JavaScript that any Node since 18 runs.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const modules = path.join(root, 'node_modules');
/** Hash of the package-lock.json node_modules was installed from, written after a good install. */
const stampFile = path.join(modules, '.package-lock.sha256');
const projectNode = path.join(modules, '.bin', 'node');

const lockHash = createHash('sha256').update(readFileSync(path.join(root, 'package-lock.json'))).digest('hex');
const installedHash = existsSync(stampFile) ? readFileSync(stampFile, 'utf8').trim() : undefined;

if (installedHash !== lockHash || !existsSync(projectNode)) {
  const why = !existsSync(modules) ? 'node_modules is missing' : installedHash ? 'package-lock.json changed since the last install' : 'node_modules was not installed by npm start/test';
  process.stderr.write(`Installing dependencies (${why}): npm ci\n`);
  const code = await npmCi();
  if (code !== 0) {
    process.stderr.write(`npm ci failed (exit ${code}); see the messages above.\n`);
    process.exit(code);
  }
  const version = spawnSync(projectNode, ['--version'], { encoding: 'utf8' }).stdout?.trim();
  if (!version?.startsWith('v24.')) {
    process.stderr.write(`expected Node 24 at ${projectNode} after npm ci, found ${version ?? 'nothing'}\n`);
    process.exit(1);
  }
  writeFileSync(stampFile, `${lockHash}\n`);
  process.stderr.write(`Dependencies installed; running on Node ${version} from node_modules/.bin/node.\n`);
}

/**
 * `npm ci` with npm's own messages passed through, except EBADENGINE: npm checks engines
 * against the Node it runs on (the system's), while everything after this step runs on the
 * Node 24 this install provides, which every package's engines field accepts.
 * @returns {Promise<number>} npm's exit code
 */
function npmCi() {
  // npm sets npm_execpath when it runs a script; run that same npm with the same Node.
  const npmCli = process.env.npm_execpath;
  const [command, args] = npmCli ? [process.execPath, [npmCli]] : ['npm', []];
  const child = spawn(command, [...args, 'ci', '--no-fund', '--no-audit', '--no-update-notifier'], { cwd: root, stdio: ['ignore', 'inherit', 'pipe'] });
  createInterface({ input: child.stderr }).on('line', (line) => {
    if (!line.startsWith('npm warn EBADENGINE')) process.stderr.write(`${line}\n`);
  });
  return new Promise((resolve) => {
    child.on('error', (err) => {
      process.stderr.write(`cannot run npm: ${err.message}\n`);
      resolve(1);
    });
    child.on('close', (code, signal) => resolve(code ?? (signal ? 1 : 0)));
  });
}
