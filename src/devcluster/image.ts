// The project's container image, built here from the repository's Dockerfile, and the
// pause image the local nodes' containerd needs, without a Docker engine or a registry:
// - buildah (`bud --isolation chroot`, overlay storage under the cache root) builds
//   the Dockerfile exactly as `docker build .` would, with --layers so an edit to src/
//   rebuilds only the steps after `COPY src`;
// - its BASE is Debian bookworm made here by mmdebstrap with debian:bookworm-slim's
//   recipe (minbase, no docs/man/locales), because no registry is reachable to pull it;
// - the pause image is Kubernetes' own pause.c and Dockerfile from the k8s.io/kubernetes
//   module the control plane is built from, compiled statically with gcc.
// Each result is an OCI image archive that `ctr -n k8s.io images import` accepts and
// tags with the image's name, cached by a hash of everything that goes into it.
import { execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, openSync, closeSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import { createGunzip } from 'node:zlib';
import { logger, type Logger } from '../log.ts';
import { systemCommand } from '../net/system-command.ts';
import { CONTROLPLANE_MODULE_DIR, REPO_ROOT, buildOnce, cacheRoot, goCommand, goEnv, isAlive, pinnedVersions } from './build.ts';

const run = promisify(execFile);

export const IMAGE_NAME = 'localhost/extbackend:dev';
export const PAUSE_IMAGE_NAME = 'localhost/pause:3.10';

// Bump when the way images are built changes, so old cache entries are not reused.
const RECIPE = 'v1';

/** debian:bookworm-slim's recipe (debuerreotype's minbase, slimmed), from Debian's archive. */
export const BASE_RECIPE = {
  suite: 'bookworm',
  variant: 'minbase',
  sources: [
    'deb http://deb.debian.org/debian bookworm main',
    'deb http://deb.debian.org/debian bookworm-updates main',
    'deb http://deb.debian.org/debian-security bookworm-security main',
  ],
  dpkgOptions: [
    'path-exclude=/usr/share/man/*',
    'path-exclude=/usr/share/info/*',
    'path-exclude=/usr/share/locale/*',
    'path-exclude=/usr/share/doc/*',
    'path-include=/usr/share/doc/*/copyright',
  ],
  containerfile: 'FROM scratch\nADD rootfs.tar /\nENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nCMD ["bash"]\n',
};

// An entry's metadata; its presence marks the entry complete (as buildOnce expects).
const COMPLETE = 'complete';
// How many builds of each image the cache keeps (an src/ edit makes a new one).
const KEEP_ENTRIES = 3;
// Debian packages the builds use (installed by .ci/install-packages).
const TOOLS = ['buildah', 'mmdebstrap', 'flock', 'unshare', 'tar', 'gcc', 'strip'];

export interface ImageLayer {
  /** The Dockerfile step that made it. */
  createdBy: string;
  digest: string;
  compressedBytes: number;
  unpackedBytes: number;
}

export interface BuiltImage {
  name: string;
  /** OCI image archive; `ctr -n k8s.io images import` tags it `name` (its ref name annotation). */
  archive: string;
  /** The manifest's digest, as containerd and registries show it. */
  digest: string;
  /** The layers as stored and shipped (gzip). */
  compressedBytes: number;
  /** The layers' tar streams: about what the image takes on a node's disk. */
  unpackedBytes: number;
  layers: ImageLayer[];
  /** How long the (last uncached) build took. */
  buildSeconds: number;
}

type Buildah = (args: string[], logFile: string) => Promise<void>;

function paths() {
  const dir = path.join(cacheRoot(), 'image');
  return { dir, storage: path.join(dir, 'storage'), lock: path.join(dir, 'buildah.lock') };
}

/**
 * The files .dockerignore lets into the build context: it is an allow-list (`*`, then
 * `!path` lines), so the hash covers exactly what the Dockerfile can copy.
 */
export function contextPaths(dockerignore: string): string[] {
  const lines = dockerignore.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  if (lines[0] !== '*' || lines.slice(1).some((l) => !l.startsWith('!'))) {
    throw new Error('.dockerignore must be an allow-list ("*" then "!path" lines): the image cache hashes only the paths it lets in');
  }
  return lines.slice(1).map((l) => l.slice(1).replace(/\/+$/, ''));
}

async function filesUnder(root: string, relative: string): Promise<string[]> {
  const full = path.join(root, relative);
  const found = await stat(full).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined; // allowed but absent: nothing to copy
    throw err;
  });
  if (!found) return [];
  if (!found.isDirectory()) return [relative];
  const entries = await readdir(full, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => path.relative(root, path.join(e.parentPath, e.name)));
}

/** Hash of the Dockerfile, the build context, the base recipe and this recipe. */
export async function imageInputsHash(root = REPO_ROOT): Promise<string> {
  const hash = createHash('sha256').update(RECIPE).update(JSON.stringify(BASE_RECIPE));
  const dockerignore = await readFile(path.join(root, '.dockerignore'), 'utf8');
  const files = ['Dockerfile', '.dockerignore', ...(await Promise.all(contextPaths(dockerignore).map((p) => filesUnder(root, p)))).flat()];
  for (const file of [...new Set(files)].sort()) {
    const full = path.join(root, file);
    const executable = ((await stat(full)).mode & 0o111) !== 0;
    hash.update(`\0${file}\0${executable ? 'x' : '-'}\0`).update(await readFile(full));
  }
  return hash.digest('hex').slice(0, 16);
}

/** Runs a command with its output in `logFile`; a failure carries the log's tail. */
async function runLogged(command: string, args: string[], logFile: string): Promise<void> {
  const fd = openSync(logFile, 'a');
  try {
    const child = spawn(command, args, { stdio: ['ignore', fd, fd] });
    const code = await new Promise<number | string>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (c, signal) => resolve(c ?? signal ?? 1));
    });
    if (code !== 0) {
      const tail = (await readFile(logFile, 'utf8')).trimEnd().split('\n').slice(-30).join('\n');
      throw new Error(`${path.basename(command)} ${args.slice(0, 3).join(' ')}... failed (${code}); its log ends with:\n${tail}`);
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * buildah on the cache's storage, one command at a time (flock), in a mount namespace
 * of its own: its overlay mounts go away with it however it ends, and its run root (the
 * record of those mounts) is fresh each time.
 */
function buildahIn(runRoot: string): Buildah {
  const { storage, lock } = paths();
  return (args, logFile) =>
    runLogged(systemCommand('flock'), [
      lock,
      systemCommand('unshare'), '--mount', '--propagation', 'private',
      systemCommand('buildah'), '--root', storage, '--runroot', runRoot, '--storage-driver', 'overlay',
      ...args,
    ], logFile);
}

function missingTools(): string[] {
  return TOOLS.filter((t) => !existsSync(systemCommand(t)));
}

async function countGunzipped(file: string): Promise<number> {
  let bytes = 0;
  await pipeline(createReadStream(file), createGunzip(), new Writable({ write: (chunk: Buffer, _enc, done) => ((bytes += chunk.length), done()) }));
  return bytes;
}

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

/** Name, digest and sizes of the one image in an OCI layout directory. */
export async function describeLayout(layout: string, name: string): Promise<Omit<BuiltImage, 'archive' | 'buildSeconds'>> {
  const blob = (digest: string): string => path.join(layout, 'blobs', ...digest.split(':'));
  const index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as { manifests: Descriptor[] };
  const entry = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === name);
  if (!entry) throw new Error(`${layout} holds no image named ${name}`);
  const manifest = JSON.parse(await readFile(blob(entry.digest), 'utf8')) as { config: Descriptor; layers: Descriptor[] };
  const config = JSON.parse(await readFile(blob(manifest.config.digest), 'utf8')) as { history?: { created_by?: string; empty_layer?: boolean }[] };
  const steps = (config.history ?? []).filter((h) => !h.empty_layer).map((h) => h.created_by ?? '');
  const layers: ImageLayer[] = [];
  for (const [i, layer] of manifest.layers.entries()) {
    let unpackedBytes: number;
    if (layer.mediaType.endsWith('.tar+gzip') || layer.mediaType.endsWith('.tar.gzip')) unpackedBytes = await countGunzipped(blob(layer.digest));
    else if (layer.mediaType.endsWith('.tar')) unpackedBytes = layer.size;
    else throw new Error(`${name}: layer ${layer.digest} has media type ${layer.mediaType}, which we do not read`);
    layers.push({ createdBy: steps[i] ?? '', digest: layer.digest, compressedBytes: layer.size, unpackedBytes });
  }
  const sum = (key: 'compressedBytes' | 'unpackedBytes'): number => layers.reduce((n, l) => n + l[key], 0);
  return { name, digest: entry.digest, compressedBytes: sum('compressedBytes'), unpackedBytes: sum('unpackedBytes'), layers };
}

/** Removes what builds of dead processes left, and all but the newest entries of `prefix`. */
async function tidyCache(dir: string, prefix: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    const partial = /\.partial-(\d+)$/.exec(name);
    if (partial && !isAlive(Number(partial[1]))) await rm(path.join(dir, name), { recursive: true, force: true });
  }
  const complete = names.filter((n) => n.startsWith(prefix) && !n.includes('.partial-') && existsSync(path.join(dir, n, COMPLETE)));
  const byAge = await Promise.all(complete.map(async (n) => ({ n, t: (await stat(path.join(dir, n, COMPLETE))).mtimeMs })));
  for (const { n } of byAge.sort((a, b) => b.t - a.t).slice(KEEP_ENTRIES)) await rm(path.join(dir, n), { recursive: true, force: true });
}

async function readEntry(entry: string): Promise<BuiltImage> {
  const meta = JSON.parse(await readFile(path.join(entry, COMPLETE), 'utf8')) as Omit<BuiltImage, 'archive'>;
  return { ...meta, archive: path.join(entry, 'image.tar') };
}

interface BuildContext {
  buildah: Buildah;
  /** A directory for the build's own files, removed afterwards. */
  work: string;
  logFile: string;
  log: Logger;
}

/**
 * The cache entry `prefix-hash`, made first when missing: `build` leaves an image in
 * buildah's storage and returns its id; it is exported as an OCI archive named `name`
 * into a staging directory that is renamed into place only when complete.
 */
async function cachedImage(prefix: string, hash: string, name: string, build: (context: BuildContext) => Promise<string>): Promise<BuiltImage> {
  const { dir } = paths();
  const entry = path.join(dir, `${prefix}-${hash}`);
  if (!existsSync(path.join(entry, COMPLETE))) await buildOnce(entry, () => buildEntry(entry, prefix, name, build));
  return readEntry(entry);
}

async function buildEntry(entry: string, prefix: string, name: string, build: (context: BuildContext) => Promise<string>): Promise<void> {
  const missing = missingTools();
  if (missing.length) throw new Error(`building ${name} needs ${missing.join(', ')}: run .ci/install-packages (it installs buildah, mmdebstrap, gcc, ...)`);
  const { dir } = paths();
  const log = logger('image-build');
  await tidyCache(dir, `${prefix}-`);
  const staging = `${entry}.partial-${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { recursive: true });
  const work = await mkdtemp(path.join(tmpdir(), 'extbackend-image-'));
  const logFile = path.join(staging, 'build.log');
  const started = Date.now();
  log.info(`building ${name} (cached afterwards)`, { into: entry, log: logFile });
  try {
    const buildah = buildahIn(path.join(work, 'buildah-run'));
    const id = await build({ buildah, work, logFile, log });
    const built = Date.now();
    const layout = path.join(work, 'layout');
    await buildah(['push', '--quiet', id, `oci:${layout}:${name}`], logFile);
    const described = await describeLayout(layout, name);
    await run(systemCommand('tar'), ['-cf', path.join(staging, 'image.tar'), '-C', layout, 'oci-layout', 'index.json', 'blobs']);
    const buildSeconds = Math.round((Date.now() - started) / 100) / 10;
    await writeFile(path.join(staging, COMPLETE), JSON.stringify({ ...described, buildSeconds }, null, 2) + '\n');
    await rm(entry, { recursive: true, force: true });
    await rename(staging, entry);
    log.info(`built ${name}`, { seconds: buildSeconds, exportSeconds: Math.round((Date.now() - built) / 100) / 10, digest: described.digest });
  } catch (err) {
    // The whole log outlives the staging directory, for a look after the failure.
    const failedLog = path.join(dir, `${prefix}-failed.log`);
    await rename(logFile, failedLog).catch(() => undefined);
    await rm(staging, { recursive: true, force: true });
    if (err instanceof Error) err.message += `\n(the whole log: ${failedLog})`;
    throw err;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** The mmdebstrap base in buildah's storage (made once per recipe); returns its name. */
async function ensureBase({ buildah, work, logFile, log }: BuildContext): Promise<string> {
  const hash = createHash('sha256').update(RECIPE).update(JSON.stringify(BASE_RECIPE)).digest('hex').slice(0, 12);
  const name = `localhost/extbackend-build-base:${BASE_RECIPE.suite}-${hash}`;
  const exists = await buildah(['inspect', '--type', 'image', name], path.join(work, 'inspect.log')).then(
    () => true,
    () => false,
  );
  if (exists) return name;
  log.info('making the Debian base with mmdebstrap (once per recipe)', { name });
  const context = path.join(work, 'base');
  await mkdir(context);
  await runLogged(systemCommand('mmdebstrap'), [
    `--variant=${BASE_RECIPE.variant}`, '--mode=unshare', '--format=tar', '--aptopt=Acquire::Retries "3"',
    ...BASE_RECIPE.dpkgOptions.map((o) => `--dpkgopt=${o}`),
    BASE_RECIPE.suite, path.join(context, 'rootfs.tar'), ...BASE_RECIPE.sources,
  ], logFile);
  await writeFile(path.join(context, 'Containerfile'), BASE_RECIPE.containerfile);
  await buildah(['bud', '--isolation', 'chroot', '-t', name, '-f', path.join(context, 'Containerfile'), context], logFile);
  await rm(context, { recursive: true, force: true });
  return name;
}

// Behind a TLS-intercepting proxy the build's downloads must trust what this machine
// trusts: the Dockerfile reads a CA bundle from the build-ca secret when there is one.
const HOST_CA_BUNDLE = '/etc/ssl/certs/ca-certificates.crt';

/** The project's image (IMAGE_NAME), from the repository's Dockerfile. */
export async function ensureImage(): Promise<BuiltImage> {
  return cachedImage('extbackend', await imageInputsHash(), IMAGE_NAME, async (context) => {
    const { buildah, work, logFile } = context;
    const base = await ensureBase(context);
    const iidfile = path.join(work, 'iid');
    await buildah([
      'bud', '--isolation', 'chroot', '--layers', '--pull-never',
      '--build-arg', `BASE=${base}`,
      ...(existsSync(HOST_CA_BUNDLE) ? ['--secret', `id=build-ca,src=${HOST_CA_BUNDLE}`] : []),
      '--iidfile', iidfile, '-f', path.join(REPO_ROOT, 'Dockerfile'), REPO_ROOT,
    ], logFile);
    return (await readFile(iidfile, 'utf8')).trim();
  });
}

const GO_ARCH: Partial<Record<NodeJS.Architecture, string>> = { x64: 'amd64', arm64: 'arm64', ppc64: 'ppc64le', s390x: 's390x' };

/** Where the Go module cache holds k8s.io/kubernetes at `version` (downloaded if missing). */
async function kubernetesModule(version: string): Promise<string> {
  const { stdout } = await run(await goCommand(), ['mod', 'download', '-json', `k8s.io/kubernetes@${version}`], { cwd: CONTROLPLANE_MODULE_DIR, env: goEnv(), maxBuffer: 16 * 1024 * 1024 });
  const info = JSON.parse(stdout) as { Dir?: string; Error?: string };
  if (!info.Dir) throw new Error(`go mod download k8s.io/kubernetes@${version}: ${info.Error ?? 'no directory'}`);
  return info.Dir;
}

/**
 * The pause image (PAUSE_IMAGE_NAME): build/pause/linux/pause.c of the Kubernetes release
 * the control plane is built from, compiled as its Makefile does (static, -Os, stripped),
 * into an image made by its own build/pause/Dockerfile with BASE=scratch.
 */
export async function ensurePauseImage(): Promise<BuiltImage> {
  const version = pinnedVersions(await readFile(path.join(CONTROLPLANE_MODULE_DIR, 'go.mod'), 'utf8')).kubernetes;
  const arch = GO_ARCH[process.arch];
  if (!arch) throw new Error(`no pause image recipe for ${process.arch}`);
  const pauseDir = path.join(await kubernetesModule(version), 'build', 'pause');
  const [source, dockerfile, makefile] = await Promise.all(['linux/pause.c', 'Dockerfile', 'Makefile'].map((f) => readFile(path.join(pauseDir, f), 'utf8')));
  const tag = /^TAG \?= (\S+)$/m.exec(makefile!)?.[1];
  if (!tag) throw new Error(`${pauseDir}/Makefile has no TAG`);
  const cflags = ['-Os', '-Wall', '-Werror', '-static', `-DVERSION=v${tag}-${version}`];
  const hash = createHash('sha256').update(RECIPE).update(JSON.stringify({ version, arch, cflags })).update(source!).update(dockerfile!).digest('hex').slice(0, 16);
  return cachedImage('pause', hash, PAUSE_IMAGE_NAME, async ({ buildah, work, logFile }) => {
    const context = path.join(work, 'context');
    const binary = path.join(context, 'bin', `pause-linux-${arch}`);
    await mkdir(path.dirname(binary), { recursive: true });
    await runLogged(systemCommand('gcc'), [...cflags, '-o', binary, path.join(pauseDir, 'linux', 'pause.c')], logFile);
    await runLogged(systemCommand('strip'), [binary], logFile);
    const iidfile = path.join(work, 'iid');
    // --layers: the program gets a layer of its own, so the history says which step made it.
    await buildah([
      'bud', '--isolation', 'chroot', '--layers', '--build-arg', 'BASE=scratch', '--build-arg', `ARCH=${arch}`,
      '--iidfile', iidfile, '-f', path.join(pauseDir, 'Dockerfile'), context,
    ], logFile);
    return (await readFile(iidfile, 'utf8')).trim();
  });
}

const megabytes = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

/** What `npm run image` prints for an image. */
export function describeImage(image: BuiltImage): string {
  const step = (createdBy: string): string => createdBy.replace(/^\/bin\/sh -c #\(nop\) /, '').replace(/ (?:dir|file):[0-9a-f]{64}/, '').trim().slice(0, 90);
  const rows = image.layers.map((l) => `    ${megabytes(l.compressedBytes).padStart(9)} ${megabytes(l.unpackedBytes).padStart(9)}  ${step(l.createdBy)}`);
  return [
    image.name,
    `  digest    ${image.digest}`,
    `  size      ${megabytes(image.compressedBytes)} compressed (gzip), ${megabytes(image.unpackedBytes)} unpacked`,
    `  archive   ${image.archive}`,
    `  layers    compressed  unpacked`,
    ...rows,
  ].join('\n');
}
