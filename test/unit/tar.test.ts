// safeExtract and the extract stage, on archives crafted here with tar-stream and compressed
// with the real bzip2 program.
import { randomBytes } from 'node:crypto';
import { lstat, mkdir, readdir, readFile, readlink, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { gzipSync } from 'node:zlib';
import { AbortedError, DomuError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { sha256File } from '../../src/core/hash.js';
import { memoryLogger } from '../../src/core/log.js';
import { safeExtract } from '../../src/fs/tar.js';
import { extractStage, treeCacheKey } from '../../src/stages/extract.js';
import { makeTestContext, tempDir } from '../helpers/context.js';
import { describeTree, diffTrees, type TreeEntry } from '../helpers/tree.js';

type Item = Partial<Header> & { name: string; body?: string | Buffer };

const MTIME = new Date('2021-12-26T16:53:00Z');

function tarBuffer(items: Item[]): Promise<Buffer> {
  const p = pack();
  for (const { body, ...h } of items) {
    const header = { mtime: MTIME, uid: 0, gid: 0, ...h } as Header;
    if (body !== undefined) p.entry(header, body);
    else p.entry(header);
  }
  p.finalize();
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    p.on('data', (c: unknown) => chunks.push(c as Buffer));
    p.on('end', () => resolve(Buffer.concat(chunks)));
    p.on('error', reject);
  });
}

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

let root: string;
beforeAll(async () => {
  root = await tempDir('domu-tar-test-');
});
afterAll(async () => {
  await rm(root, { recursive: true, force: true });
});

let seq = 0;
/** A fresh case directory: `in/` for the archive, `out/` (empty) where `out/tree` is extracted. */
async function caseDir(): Promise<{ dir: string; out: string; dest: string }> {
  const dir = join(root, `case-${++seq}`);
  await mkdir(join(dir, 'in'), { recursive: true });
  await mkdir(join(dir, 'out'));
  return { dir, out: join(dir, 'out'), dest: join(dir, 'out', 'tree') };
}

/** Write the tar (bzip2-compressed by the real program unless `compress` says otherwise). */
async function writeArchive(dir: string, name: string, items: Item[], compress: 'bzip2' | 'gzip' | 'none' = 'bzip2'): Promise<string> {
  const tar = await tarBuffer(items);
  if (compress === 'none') {
    const p = join(dir, 'in', name);
    await writeFile(p, tar);
    return p;
  }
  if (compress === 'gzip') {
    const p = join(dir, 'in', name);
    await writeFile(p, gzipSync(tar));
    return p;
  }
  const plain = join(dir, 'in', name.replace(/\.bz2$/, ''));
  await writeFile(plain, tar);
  await run(env, 'bzip2', ['-f', plain]); // replaces it with `${plain}.bz2`
  return `${plain}.bz2`;
}

/** Everything under the case directory except the archive itself. */
async function snapshot(dir: string): Promise<string[]> {
  return (await describeTree(dir)).filter((e) => !e.path.startsWith('in/')).map((e) => `${e.path} ${e.type}`);
}

/** Extraction must fail with exactly `message`, and leave the case directory as it was. */
async function expectRefusal(c: { dir: string; out: string; dest: string }, archive: string, message: string, decompressor?: 'native' | 'js'): Promise<void> {
  const before = await snapshot(c.dir);
  const err = await safeExtract({ archive, dest: c.dest, env, ...(decompressor ? { decompressor } : {}) }).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, 'extraction should have failed').toBeInstanceOf(DomuError);
  expect((err as Error).message).toBe(message);
  expect(await readdir(c.out), 'dest and temporaries are gone').toEqual([]);
  expect(await snapshot(c.dir), 'nothing written anywhere else').toEqual(before);
}

const top = (rest: string) => `pkg-1.0/${rest}`;
const baseItems: Item[] = [
  { name: 'pkg-1.0/', type: 'directory', mode: 0o755 },
  { name: 'pkg-1.0/README', body: 'hello\n', mode: 0o644 },
];

describe('safeExtract refuses unsafe archives', () => {
  it('absolute paths', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'abs.tar.bz2', [...baseItems, { name: '/tmp/domu-abs-evil', body: 'x' }]);
    await expectRefusal(c, a, 'abs.tar.bz2: refusing entry "/tmp/domu-abs-evil": absolute path');
  });

  it('".." components', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'dotdot.tar.bz2', [...baseItems, { name: top('../../escaped'), body: 'x' }]);
    await expectRefusal(c, a, 'dotdot.tar.bz2: refusing entry "pkg-1.0/../../escaped": ".." in path');
    const b = await writeArchive(c.dir, 'dotdot2.tar.bz2', [...baseItems, { name: top('sub/../README2'), body: 'x' }]);
    await expectRefusal(c, b, 'dotdot2.tar.bz2: refusing entry "pkg-1.0/sub/../README2": ".." in path');
  });

  it('symlinks that leave the tree', async () => {
    const c = await caseDir();
    const rel = await writeArchive(c.dir, 'sym.tar.bz2', [...baseItems, { name: top('link'), type: 'symlink', linkname: '../../outside' }]);
    await expectRefusal(c, rel, 'sym.tar.bz2: refusing entry "pkg-1.0/link": symlink target "../../outside" leaves the tree');
    const abs = await writeArchive(c.dir, 'symabs.tar.bz2', [...baseItems, { name: top('etc'), type: 'symlink', linkname: '/etc' }]);
    await expectRefusal(c, abs, 'symabs.tar.bz2: refusing entry "pkg-1.0/etc": symlink target "/etc" is absolute (leaves the tree)');
    // By name "d/s/.." is "d", but d/s is itself a link to "..": the kernel would land outside.
    const chained = await writeArchive(c.dir, 'symchain.tar.bz2', [
      ...baseItems,
      { name: top('e'), type: 'symlink', linkname: 'd/s/..' },
      { name: top('d/s'), type: 'symlink', linkname: '..' },
    ]);
    await expectRefusal(c, chained, 'symchain.tar.bz2: refusing entry "pkg-1.0/e": symlink target "d/s/.." leaves the tree (through other symlinks)');
    // A later entry may not be written through an extracted symlink.
    const through = await writeArchive(c.dir, 'symthrough.tar.bz2', [
      ...baseItems,
      { name: top('sub/'), type: 'directory', mode: 0o755 },
      { name: top('link'), type: 'symlink', linkname: 'sub' },
      { name: top('link/file'), body: 'x' },
    ]);
    await expectRefusal(c, through, 'symthrough.tar.bz2: refusing entry "pkg-1.0/link/file": path passes through the symlink "link"');
  });

  it('hardlinks that leave the tree or point at nothing', async () => {
    const c = await caseDir();
    const up = await writeArchive(c.dir, 'hard.tar.bz2', [...baseItems, { name: top('h'), type: 'link', linkname: 'pkg-1.0/../../etc/passwd' }]);
    await expectRefusal(c, up, 'hard.tar.bz2: refusing entry "pkg-1.0/h": hardlink target "pkg-1.0/../../etc/passwd" leaves the tree');
    const abs = await writeArchive(c.dir, 'hardabs.tar.bz2', [...baseItems, { name: top('h'), type: 'link', linkname: '/etc/passwd' }]);
    await expectRefusal(c, abs, 'hardabs.tar.bz2: refusing entry "pkg-1.0/h": hardlink target "/etc/passwd" leaves the tree');
    const other = await writeArchive(c.dir, 'hardother.tar.bz2', [...baseItems, { name: top('h'), type: 'link', linkname: 'other-2.0/README' }]);
    await expectRefusal(c, other, 'hardother.tar.bz2: refusing entry "pkg-1.0/h": hardlink target "other-2.0/README" leaves the tree');
    const missing = await writeArchive(c.dir, 'hardmissing.tar.bz2', [
      ...baseItems,
      { name: top('h'), type: 'link', linkname: 'pkg-1.0/later' },
      { name: top('later'), body: 'x' },
    ]);
    await expectRefusal(c, missing, 'hardmissing.tar.bz2: refusing entry "pkg-1.0/h": hardlink target "pkg-1.0/later" is not an earlier file of the archive');
  });

  it('device nodes and FIFOs', async () => {
    const c = await caseDir();
    const chr = await writeArchive(c.dir, 'chr.tar.bz2', [...baseItems, { name: top('dev/null'), type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 }]);
    await expectRefusal(c, chr, 'chr.tar.bz2: refusing entry "pkg-1.0/dev/null": character-device entries are not allowed');
    const blk = await writeArchive(c.dir, 'blk.tar.bz2', [...baseItems, { name: top('dev/sda'), type: 'block-device', devmajor: 8, devminor: 0, mode: 0o660 }]);
    await expectRefusal(c, blk, 'blk.tar.bz2: refusing entry "pkg-1.0/dev/sda": block-device entries are not allowed');
    const fifo = await writeArchive(c.dir, 'fifo.tar.bz2', [...baseItems, { name: top('pipe'), type: 'fifo', mode: 0o644 }]);
    await expectRefusal(c, fifo, 'fifo.tar.bz2: refusing entry "pkg-1.0/pipe": FIFO entries are not allowed');
  });

  it('more than one top directory when stripping', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'tops.tar.bz2', [...baseItems, { name: 'other-2.0/file', body: 'x' }]);
    await expectRefusal(c, a, 'tops.tar.bz2: more than one top directory ("pkg-1.0" and "other-2.0", entry "other-2.0/file"); refusing to strip');
    const loose = await writeArchive(c.dir, 'loose.tar.bz2', [...baseItems, { name: 'loose-file', body: 'x' }]);
    await expectRefusal(c, loose, 'loose.tar.bz2: refusing entry "loose-file": outside the top directory');
  });

  it('an existing destination', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'ok.tar.bz2', baseItems);
    await mkdir(c.dest);
    await expect(safeExtract({ archive: a, dest: c.dest, env })).rejects.toThrow(`ok.tar.bz2: cannot extract into ${c.dest}: it already exists`);
    expect(await readdir(c.out)).toEqual(['tree']);
    expect(await readdir(c.dest)).toEqual([]);
  });

  it('what is not a tar archive', async () => {
    const c = await caseDir();
    const p = join(c.dir, 'in', 'junk.tar.bz2');
    await writeFile(p, 'this is not an archive at all\n');
    await expectRefusal(c, p, 'junk.tar.bz2: not a tar archive (expected bzip2, gzip or plain tar)');
  });
});

describe('safeExtract on damaged bzip2 data', () => {
  let good: Buffer;
  beforeAll(async () => {
    // Incompressible content, so that the .bz2 has several blocks' worth of data in its middle.
    const c = await caseDir();
    const items: Item[] = [{ name: 'pkg-1.0/', type: 'directory', mode: 0o755 }];
    for (let i = 0; i < 12; i++) items.push({ name: top(`data/blob-${i}`), body: randomBytes(200_000), mode: 0o644 });
    good = await readFile(await writeArchive(c.dir, 'good.tar.bz2', items));
  });

  for (const decompressor of ['native', 'js'] as const) {
    it(`truncated (${decompressor})`, async () => {
      const c = await caseDir();
      const p = join(c.dir, 'in', 'busybox-1.35.0.tar.bz2');
      await writeFile(p, good.subarray(0, Math.floor(good.length / 2)));
      await expectRefusal(c, p, 'busybox-1.35.0.tar.bz2: truncated or corrupt bzip2 data', decompressor);
    });

    it(`truncated near the end (${decompressor})`, async () => {
      const c = await caseDir();
      const p = join(c.dir, 'in', 'busybox-1.35.0.tar.bz2');
      await writeFile(p, good.subarray(0, good.length - 20));
      await expectRefusal(c, p, 'busybox-1.35.0.tar.bz2: truncated or corrupt bzip2 data', decompressor);
    });

    it(`corrupt in the middle (${decompressor})`, async () => {
      const c = await caseDir();
      const p = join(c.dir, 'in', 'busybox-1.35.0.tar.bz2');
      const bad = Buffer.from(good);
      const mid = bad.length >> 1;
      for (let i = 0; i < 16; i++) bad[mid + i] = bad[mid + i]! ^ 0x5a;
      await writeFile(p, bad);
      await expectRefusal(c, p, 'busybox-1.35.0.tar.bz2: truncated or corrupt bzip2 data', decompressor);
    });
  }

  it('a truncated plain tar', async () => {
    const c = await caseDir();
    const tar = await tarBuffer([...baseItems, { name: top('big'), body: randomBytes(50_000) }]);
    const p = join(c.dir, 'in', 'short.tar');
    await writeFile(p, tar.subarray(0, 20_000));
    await expectRefusal(c, p, 'short.tar: truncated tar data');
  });
});

describe('safeExtract keeps what the archive says', () => {
  const items: Item[] = [
    { name: 'pkg-1.0/', type: 'directory', mode: 0o755, mtime: new Date('2020-01-02T03:04:05Z') },
    { name: 'pkg-1.0/bin/', type: 'directory', mode: 0o755 },
    { name: 'pkg-1.0/bin/tool', body: '#!/bin/sh\necho hi\n', mode: 0o755, mtime: new Date('2019-05-06T07:08:09Z') },
    { name: 'pkg-1.0/secret', body: 'key\n', mode: 0o600 },
    { name: 'pkg-1.0/suid', body: 'x', mode: 0o4755 },
    { name: 'pkg-1.0/private/', type: 'directory', mode: 0o700, mtime: new Date('2018-01-01T00:00:00Z') },
    { name: 'pkg-1.0/private/note', body: 'n\n', mode: 0o640 },
    { name: 'pkg-1.0/readonly/', type: 'directory', mode: 0o555 },
    { name: 'pkg-1.0/readonly/file', body: 'r\n', mode: 0o444 },
    { name: 'pkg-1.0/implicit/deep/file', body: 'parents not in the archive\n', mode: 0o644 },
    { name: 'pkg-1.0/empty', body: '', mode: 0o644 },
    { name: 'pkg-1.0/big', body: randomBytes(3 * 1024 * 1024 + 17), mode: 0o644 },
    { name: 'pkg-1.0/link-to-tool', type: 'symlink', linkname: 'bin/tool', mtime: new Date('2017-01-01T00:00:00Z') },
    { name: 'pkg-1.0/bin/up', type: 'symlink', linkname: '../secret' },
    { name: 'pkg-1.0/dangling', type: 'symlink', linkname: 'not/there' },
    { name: 'pkg-1.0/bin/tool-hard', type: 'link', linkname: 'pkg-1.0/bin/tool' },
    { name: 'pkg-1.0/' + 'long/'.repeat(30) + 'name-longer-than-a-ustar-header-allows.txt', body: 'pax\n', mode: 0o644 },
  ];

  it('modes, symlinks, hardlinks and mtimes, with the top directory stripped', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'pkg-1.0.tar.bz2', items);
    const old = process.umask(0o077); // modes must be exact whatever the umask
    let r;
    try {
      r = await safeExtract({ archive: a, dest: c.dest, env });
    } finally {
      process.umask(old);
    }
    expect(r).toMatchObject({ files: 9, symlinks: 3, hardlinks: 1, decompressor: 'native' });
    const d = c.dest;
    expect(await readdir(c.out)).toEqual(['tree']);
    const mode = async (p: string) => (await lstat(join(d, p))).mode & 0o7777;
    const mtime = async (p: string) => (await lstat(join(d, p))).mtime.toISOString();
    expect(await mode('')).toBe(0o755);
    expect(await mode('bin/tool')).toBe(0o755);
    expect(await mode('secret')).toBe(0o600);
    expect(await mode('suid')).toBe(0o4755);
    expect(await mode('private')).toBe(0o700);
    expect(await mode('private/note')).toBe(0o640);
    expect(await mode('readonly')).toBe(0o555);
    expect(await mode('readonly/file')).toBe(0o444);
    expect(await mode('implicit/deep')).toBe(0o700); // like tar: 0777 minus the umask of the run (077 here)
    expect(await readFile(join(d, 'bin/tool'), 'utf8')).toBe('#!/bin/sh\necho hi\n');
    expect((await stat(join(d, 'big'))).size).toBe(3 * 1024 * 1024 + 17);
    expect((await stat(join(d, 'empty'))).size).toBe(0);
    expect(await readlink(join(d, 'link-to-tool'))).toBe('bin/tool');
    expect(await readlink(join(d, 'bin/up'))).toBe('../secret');
    expect(await readlink(join(d, 'dangling'))).toBe('not/there');
    const tool = await stat(join(d, 'bin/tool'));
    const hard = await stat(join(d, 'bin/tool-hard'));
    expect(hard.ino).toBe(tool.ino);
    expect(tool.nlink).toBe(2);
    expect(await mtime('')).toBe('2020-01-02T03:04:05.000Z');
    expect(await mtime('bin/tool')).toBe('2019-05-06T07:08:09.000Z');
    expect(await mtime('private')).toBe('2018-01-01T00:00:00.000Z');
    expect(await mtime('secret')).toBe(MTIME.toISOString());
    expect(await mtime('bin')).toBe(MTIME.toISOString()); // set after its entries were written
    expect(await mtime('link-to-tool')).toBe('2017-01-01T00:00:00.000Z');
    expect(await readFile(join(d, 'long/'.repeat(30) + 'name-longer-than-a-ustar-header-allows.txt'), 'utf8')).toBe('pax\n');
  });

  it('the js and native decompressors give identical trees', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'pkg-1.0.tar.bz2', items);
    const native = await safeExtract({ archive: a, dest: join(c.out, 'native'), env, decompressor: 'native' });
    const js = await safeExtract({ archive: a, dest: join(c.out, 'js'), env, decompressor: 'js' });
    expect(native.decompressor).toBe('native');
    expect(js.decompressor).toBe('js');
    const tn = await describeTree(join(c.out, 'native'), { mtimes: true });
    const tj = await describeTree(join(c.out, 'js'), { mtimes: true });
    expect(tn.length).toBeGreaterThan(15);
    expect(diffTrees(archiveTimesOnly(tn), archiveTimesOnly(tj))).toEqual([]);
  });

  /** Directories that are not entries of the archive get the time of extraction, as with tar. */
  function archiveTimesOnly(t: TreeEntry[]): TreeEntry[] {
    return t.map((e) => (e.type === 'dir' && /^(implicit|long)(\/|$)/.test(e.path) ? { ...e, mtime: 0 } : e));
  }

  it('gzip and plain tar archives too, and stripComponents 0', async () => {
    const c = await caseDir();
    const gz = await writeArchive(c.dir, 'pkg.tar.gz', items, 'gzip');
    const plain = await writeArchive(c.dir, 'pkg.tar', items, 'none');
    const bz = await writeArchive(c.dir, 'pkg-1.0.tar.bz2', items);
    await safeExtract({ archive: gz, dest: join(c.out, 'gz'), env });
    await safeExtract({ archive: plain, dest: join(c.out, 'plain'), env });
    await safeExtract({ archive: bz, dest: join(c.out, 'bz'), env });
    await safeExtract({ archive: plain, dest: join(c.out, 'whole'), env, stripComponents: 0 });
    const tree = async (d: string) => archiveTimesOnly(await describeTree(join(c.out, d), { mtimes: true }));
    const tb = await tree('bz');
    expect(diffTrees(tb, await tree('gz'))).toEqual([]);
    expect(diffTrees(tb, await tree('plain'))).toEqual([]);
    expect(diffTrees(tb, await tree('whole/pkg-1.0'))).toEqual([]);
  });

  it('"./" prefixes, duplicates (the last wins), hardlinks to symlinks', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'tricky.tar.bz2', [
      { name: './', type: 'directory', mode: 0o755 },
      { name: './pkg-1.0/', type: 'directory', mode: 0o750 },
      { name: './pkg-1.0/file', body: 'first\n', mode: 0o644 },
      { name: './pkg-1.0/file', body: 'second\n', mode: 0o600 },
      { name: './pkg-1.0/s', type: 'symlink', linkname: 'file' },
      { name: './pkg-1.0/s-hard', type: 'link', linkname: './pkg-1.0/s' },
      { name: './pkg-1.0/was-link', type: 'symlink', linkname: 'file' },
      { name: './pkg-1.0/was-link', body: 'now a file\n', mode: 0o644 },
    ]);
    await safeExtract({ archive: a, dest: c.dest, env });
    const d = c.dest;
    expect((await stat(d)).mode & 0o7777).toBe(0o750);
    expect(await readFile(join(d, 'file'), 'utf8')).toBe('second\n');
    expect((await stat(join(d, 'file'))).mode & 0o7777).toBe(0o600);
    expect(await readlink(join(d, 's'))).toBe('file');
    expect(await readlink(join(d, 's-hard'))).toBe('file');
    expect((await lstat(join(d, 's-hard'))).ino).toBe((await lstat(join(d, 's'))).ino);
    expect((await lstat(join(d, 'was-link'))).isFile()).toBe(true);
    expect(await readFile(join(d, 'was-link'), 'utf8')).toBe('now a file\n');
  });

  it('refuses symlink loops', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'loop.tar.bz2', [...baseItems, { name: top('a'), type: 'symlink', linkname: 'b' }, { name: top('b'), type: 'symlink', linkname: 'a' }]);
    await expectRefusal(c, a, 'loop.tar.bz2: refusing entry "pkg-1.0/a": symlink target "b": too many levels of symbolic links');
  });

  it('reports progress', async () => {
    const c = await caseDir();
    const a = await writeArchive(c.dir, 'pkg-1.0.tar.bz2', items);
    const seen: number[] = [];
    await safeExtract({ archive: a, dest: c.dest, env, onProgress: (n) => seen.push(n) });
    expect(seen.length).toBeGreaterThan(0);
    expect(seen.at(-1)).toBeGreaterThan(3 * 1024 * 1024);
  });
});

describe('extract stage', () => {
  async function archiveFor(dir: string, blobs = 2): Promise<{ tarball: string; sha256: string }> {
    const items: Item[] = [...baseItems];
    for (let i = 0; i < blobs; i++) items.push({ name: top(`blob-${i}`), body: randomBytes(250_000) });
    const tarball = await writeArchive(dir, 'pkg-1.0.tar.bz2', items);
    return { tarball, sha256: await sha256File(tarball) };
  }

  it('extracts into the cache once, then hits', async () => {
    const ctx = await makeTestContext();
    try {
      await mkdir(join(ctx.root, 'in'));
      const input = await archiveFor(ctx.root);
      const first = await extractStage(input, ctx);
      expect(first.cacheHit).toBe(false);
      expect(first.decompressor).toBe('native');
      expect(first.tree).toBe(join(ctx.cache.root, 'trees', treeCacheKey(input.sha256), 'src'));
      expect(await readFile(join(first.tree, 'README'), 'utf8')).toBe('hello\n');
      const second = await extractStage(input, ctx);
      expect(second).toEqual({ tree: first.tree, cacheHit: true });
      expect(ctx.lines.some((l) => l.includes('cached'))).toBe(true);
      expect(ctx.cleanup.size).toBe(0);
      const js = await extractStage({ ...input, pureJs: true, noCache: true }, ctx);
      expect(js).toMatchObject({ tree: first.tree, cacheHit: false, decompressor: 'js' });
    } finally {
      await ctx.dispose();
    }
  });

  it('an abort in the middle leaves no entry under cache/trees', async () => {
    const ctx = await makeTestContext();
    try {
      await mkdir(join(ctx.root, 'in'));
      const input = await archiveFor(ctx.root, 40);
      // Abort at the first sign of progress: data is flowing, the bzip2 child is running.
      let aborted = false;
      ctx.progress = () => {
        if (aborted) return;
        aborted = true;
        ctx.controller.abort();
      };
      const err = await extractStage(input, ctx).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(aborted).toBe(true);
      expect(ctx.lines.some((l) => l.includes('$ bzip2 -dc'))).toBe(true);
      expect(err).toBeInstanceOf(AbortedError);
      expect(await readdir(join(ctx.cache.root, 'trees'))).toEqual([]);
      expect(ctx.cleanup.size).toBe(0);
    } finally {
      await ctx.dispose();
    }
  });

  it('a corrupt archive leaves no entry under cache/trees', async () => {
    const ctx = await makeTestContext();
    try {
      await mkdir(join(ctx.root, 'in'));
      const { tarball } = await archiveFor(ctx.root, 8);
      const data = await readFile(tarball);
      for (let i = 0; i < 16; i++) data[(data.length >> 1) + i] = data[(data.length >> 1) + i]! ^ 0xff;
      await writeFile(tarball, data);
      const sha256 = await sha256File(tarball);
      await expect(extractStage({ tarball, sha256 }, ctx)).rejects.toThrow('pkg-1.0.tar.bz2: truncated or corrupt bzip2 data');
      expect(await readdir(join(ctx.cache.root, 'trees'))).toEqual([]);
      await expect(extractStage({ tarball, sha256: 'a'.repeat(64) }, ctx)).rejects.toThrow(/sha256 is [0-9a-f]{64}, expected a{64}/);
      expect(await readdir(join(ctx.cache.root, 'trees'))).toEqual([]);
    } finally {
      await ctx.dispose();
    }
  });
});
