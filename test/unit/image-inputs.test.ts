// The image cache key: exactly the files the Dockerfile can see (.dockerignore's allow-list).
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import test from 'ava';
import { contextPaths, imageInputsHash } from '../../src/devcluster/image.ts';

test('the build context is the allow-list .dockerignore names', (t) => {
  t.deepEqual(contextPaths('# what the Dockerfile copies\n*\n!package.json\n!src/\n\n!image/\n'), ['package.json', 'src', 'image']);
  t.throws(() => contextPaths('node_modules\n.git\n'), { message: /allow-list/ }, 'a deny-list would let unhashed files into the image');
  t.throws(() => contextPaths('*\n!src/\ntest\n'), { message: /allow-list/ });
});

test('the hash changes with what goes into the image, and only with that', async (t) => {
  const root = await mkdtemp(path.join(tmpdir(), 'extbackend-image-inputs-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const put = async (file: string, text: string): Promise<void> => {
    await mkdir(path.dirname(path.join(root, file)), { recursive: true });
    await writeFile(path.join(root, file), text);
  };
  await put('.dockerignore', '*\n!package.json\n!src/\n');
  await put('Dockerfile', 'FROM scratch\n');
  await put('package.json', '{}');
  await put('src/cli/main.ts', 'one');
  await put('test/a.test.ts', 'one');
  const first = await imageInputsHash(root);

  await put('test/a.test.ts', 'two');
  await put('README.md', 'not in the context');
  t.is(await imageInputsHash(root), first, 'files outside the context do not count');

  // Each change alone makes a new hash.
  let previous = first;
  const changes: [string, () => Promise<void>][] = [
    ['a source edit', () => put('src/cli/main.ts', 'two')],
    ['the executable bit', () => chmod(path.join(root, 'src/cli/main.ts'), 0o755)],
    ['a new file', () => put('src/cli/new.ts', '')],
    ['package.json', () => put('package.json', '{"version":"1"}')],
    ['the Dockerfile', () => put('Dockerfile', 'FROM scratch\nUSER 1\n')],
    ['.dockerignore', () => put('.dockerignore', '*\n!package.json\n!src/\n!bin/\n')],
  ];
  for (const [what, change] of changes) {
    await change();
    const next = await imageInputsHash(root);
    t.not(next, previous, what);
    previous = next;
  }
});
