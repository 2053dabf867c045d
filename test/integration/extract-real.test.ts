// The real busybox 1.35.0 tarball: our extraction (bzip2 child and pure JS) against `tar xjf`.
// Same paths, types, modes, sizes, contents, symlink targets and mtimes.
import { mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { safeExtract } from '../../src/fs/tar.js';
import { getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { tempDir } from '../helpers/context.js';
import { describeTree, diffTrees, type TreeEntry } from '../helpers/tree.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

let tarball: string;
let root: string;
let reference: TreeEntry[];

beforeAll(async () => {
  tarball = await getBusyboxTarball();
  root = await tempDir('domu-extract-real-');
  await mkdir(join(root, 'tar'));
  await run(env, 'tar', ['xjf', tarball, '-C', join(root, 'tar')]);
  expect(await readdir(join(root, 'tar'))).toEqual(['busybox-1.35.0']);
  reference = await describeTree(join(root, 'tar', 'busybox-1.35.0'), { mtimes: true });
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('extracting the real busybox 1.35.0 tarball', () => {
  for (const decompressor of ['native', 'js'] as const) {
    it(`gives the same tree as tar xjf (${decompressor})`, async () => {
      const dest = join(root, decompressor);
      const r = await safeExtract({ archive: tarball, dest, env, decompressor });
      expect(r.decompressor).toBe(decompressor);
      expect(r.files).toBe(reference.filter((e) => e.type === 'file').length);
      expect(r.symlinks).toBe(reference.filter((e) => e.type === 'symlink').length);
      expect(r.dirs).toBe(reference.filter((e) => e.type === 'dir').length);
      expect(r.files).toBeGreaterThan(2000);

      const ours = await describeTree(dest, { mtimes: true });
      expect(ours.length).toBe(reference.length);
      expect(diffTrees(reference, ours)).toEqual([]);

      // The stripped top directory's own mode and time went to the tree's root.
      const a = await stat(join(root, 'tar', 'busybox-1.35.0'));
      const b = await stat(dest);
      expect(b.mode & 0o7777).toBe(a.mode & 0o7777);
      expect(Math.floor(b.mtimeMs / 1000)).toBe(Math.floor(a.mtimeMs / 1000));
      expect((await readdir(root)).filter((n) => n.startsWith('.tmp-'))).toEqual([]);
    });
  }
});
