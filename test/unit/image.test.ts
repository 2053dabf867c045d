// The image stage with the real e2fsprogs: rootless (mke2fs -d + one debugfs pass) and loop-mount
// population, reproducibility, ownership when run by an unprivileged user, size checks, abort.
import { chmod, link, lstat, mkdir, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  debugfsQuote,
  deterministicUuid,
  dumpe2fsHeader,
  e2fsckCheck,
  fixupScript,
  inodesUsed,
  listImage,
  parseDumpe2fsHeader,
  parseLayout,
  parseLsP,
  statInImage,
  UUID_RE,
  type ImageEntry,
} from '../../src/fs/e2fs.js';
import { sha256Sparse } from '../../src/fs/sparse.js';
import { AbortedError, DomuError, InputError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { sha256File } from '../../src/core/hash.js';
import { memoryLogger } from '../../src/core/log.js';
import { imageStage, type DeviceNode, type ImageInput, type ImageOutput } from '../../src/stages/image.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';
import { describeTree, diffTrees } from '../helpers/tree.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;
const EPOCH = 1700000000;
const HASH = 'a'.repeat(64);
const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

const DEVICES: DeviceNode[] = [
  { path: '/dev/console', type: 'c', mode: 0o600, uid: 0, gid: 0, major: 5, minor: 1 },
  { path: '/dev/null', type: 'c', mode: 0o666, uid: 0, gid: 0, major: 1, minor: 3 },
  { path: '/dev/xvda', type: 'b', mode: 0o660, uid: 0, gid: 0, major: 202, minor: 0 },
];

/** A small busybox-like root: a "binary", symlinks to it, a 0755 script, /tmp 01777, odd names. */
async function makeStaging(dir: string, opts: { bigFiles?: number } = {}): Promise<string> {
  await mkdir(join(dir, 'bin'), { recursive: true });
  await mkdir(join(dir, 'sbin'));
  await mkdir(join(dir, 'etc/init.d'), { recursive: true });
  await mkdir(join(dir, 'dev'));
  await mkdir(join(dir, 'tmp'));
  await mkdir(join(dir, 'a dir'));
  await writeFile(join(dir, 'bin/busybox'), randomBytes(300_000), { mode: 0o755 });
  await chmod(join(dir, 'bin/busybox'), 0o755);
  for (const a of ['sh', 'ls', 'cat', 'mount']) await symlink('busybox', join(dir, 'bin', a));
  await symlink('../bin/busybox', join(dir, 'sbin/init'));
  await symlink(`../${'x'.repeat(80)}/long/target`, join(dir, 'sbin/long-link')); // a slow symlink (≥ 60 bytes)
  await writeFile(join(dir, 'etc/init.d/rcS'), '#!/bin/sh\nmount -a\n');
  await chmod(join(dir, 'etc/init.d/rcS'), 0o755);
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await link(join(dir, 'etc/passwd'), join(dir, 'etc/passwd.hardlink'));
  await writeFile(join(dir, "a dir/it's a file"), 'spaces and quotes\n');
  await chmod(join(dir, 'tmp'), 0o1777);
  for (let i = 0; i < (opts.bigFiles ?? 0); i++) await writeFile(join(dir, `big-${i}`), randomBytes(MiB));
  // Times of the builder, not the epoch: the image must not depend on them.
  await utimes(join(dir, 'etc/passwd'), new Date(), new Date(2001, 1, 1));
  return dir;
}

function input(staging: string, output: string, over: Partial<ImageInput> = {}): ImageInput {
  return { staging, devices: DEVICES, output, size: 64 * MiB, label: 'busybox', populate: 'rootless', sourceDateEpoch: EPOCH, contentHash: HASH, ...over };
}

function statField(text: string, re: RegExp): string | undefined {
  return re.exec(text)?.[1];
}

async function leftovers(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n.startsWith('.tmp-'));
}

const strip = (es: ImageEntry[]) => es.map(({ inode: _i, ...rest }) => rest);

let ctx: TestContext;
let staging: string;
let outDir: string;
let first: ImageOutput;

beforeAll(async () => {
  ctx = await makeTestContext();
  staging = await makeStaging(join(ctx.root, 'staging'));
  outDir = join(ctx.root, 'out');
  await mkdir(outDir);
  first = await imageStage(input(staging, join(outDir, 'a.img')), ctx);
});

afterAll(async () => {
  await ctx?.dispose();
});

describe('e2fs helpers', () => {
  it('derives RFC 4122-variant UUIDs from a hash, size and label', () => {
    const u = deterministicUuid(HASH, 1024, 'busybox');
    expect(u).toMatch(UUID_RE);
    expect(u[14]).toBe('8'); // version 8 (RFC 9562 custom)
    expect('89ab').toContain(u[19]!); // variant 10xx
    expect(deterministicUuid(HASH, 1024, 'busybox')).toBe(u);
    expect(deterministicUuid(HASH, 2048, 'busybox')).not.toBe(u);
    expect(deterministicUuid('b'.repeat(64), 1024, 'busybox')).not.toBe(u);
    expect(() => deterministicUuid('not hex')).toThrow(DomuError);
  });

  it('quotes paths for debugfs and refuses what it cannot quote', () => {
    expect(debugfsQuote("/a dir/it's")).toBe(`"/a dir/it's"`);
    expect(() => debugfsQuote('/a"b')).toThrow(/double quote/);
    expect(() => debugfsQuote('/a\nb')).toThrow(DomuError);
  });

  it('writes one fixup script: mknod inside the directory, then mode with the type bits', () => {
    const s = fixupScript({ devices: [DEVICES[0]!, DEVICES[2]!], paths: ['/', '/bin/sh'], epoch: EPOCH, mkdirs: ['/dev'] });
    const lines = s.trim().split('\n');
    expect(lines.slice(0, 4)).toEqual(['mkdir "/dev"', 'cd "/dev"', 'mknod "console" c 5 1', 'sif "console" mode 020600']);
    expect(lines).toContain('sif "xvda" mode 060660');
    expect(lines).toContain('sif "/bin/sh" uid 0');
    expect(lines).toContain(`sif "/bin/sh" ctime @${EPOCH}`);
    expect(lines).toContain(`sif "/dev/console" crtime @${EPOCH}`);
    expect(lines.filter((l) => l.startsWith('mknod')).every((l) => !l.includes('/'))).toBe(true);
  });

  it('parses mke2fs -n -v, dumpe2fs -h and ls -p output', () => {
    const l = parseLayout('Block size=4096 (log=2)\n65536 inodes, 262144 blocks\n8 block groups\n32768 blocks per group, 32768 fragments per group\n8192 inodes per group\n');
    expect(l).toEqual({ blockSize: 4096, blocks: 262144, inodes: 65536, groups: 8, blocksPerGroup: 32768, inodesPerGroup: 8192 });
    const h = parseDumpe2fsHeader('Filesystem volume name:   busybox\nInode count:              16384\nFree inodes:              16360\n');
    expect(h.get('Filesystem volume name')).toBe('busybox');
    expect(inodesUsed(h)).toBe(24);
    const es = parseLsP('/12/041777/0/0/.//\n/2/040755/0/0/..//\n/13/100644/0/0/f \'q\'/2/\n/18/020600/0/0/console/0/\n', '/x');
    expect(es).toEqual([
      { path: "/x/f 'q'", inode: 13, mode: 0o100644, uid: 0, gid: 0, size: 2 },
      { path: '/x/console', inode: 18, mode: 0o020600, uid: 0, gid: 0, size: 0 },
    ]);
  });
});

describe('rootless image', () => {
  it('is a clean ext4 file system with the tree, the device nodes, root ownership', async () => {
    const img = first.path;
    expect(first.populate).toBe('rootless');
    expect(first.reproducible).toBe(true);
    await e2fsckCheck(env, img);
    const r = await run(env, 'e2fsck', ['-fn', img]);
    expect(r.exitCode).toBe(0);

    const con = await statInImage(env, img, '/dev/console');
    expect(con).toMatch(/Type: character special/);
    expect(statField(con, /Mode:\s+(\d+)/)).toBe('0600');
    expect(con).toMatch(/Device major\/minor number: 0*5:0*1\b/);
    const xvda = await statInImage(env, img, '/dev/xvda');
    expect(xvda).toMatch(/Type: block special/);
    expect(statField(xvda, /Mode:\s+(\d+)/)).toBe('0660');
    expect(xvda).toMatch(/Device major\/minor number: 202:0*0\b/);

    const all = await listImage(env, img);
    const byPath = new Map(all.map((e) => [e.path, e]));
    expect(all.length).toBeGreaterThan(15);
    for (const e of all) expect([e.path, e.uid, e.gid]).toEqual([e.path, 0, 0]);
    expect(byPath.get('/tmp')!.mode).toBe(0o041777);
    expect(byPath.get('/etc/init.d/rcS')!.mode).toBe(0o100755);
    expect(byPath.get('/bin/sh')!.mode & 0o170000).toBe(0o120000);
    expect(byPath.get("/a dir/it's a file")!.size).toBe(18);
    expect(byPath.get('/etc/passwd')!.inode).toBe(byPath.get('/etc/passwd.hardlink')!.inode);
    expect(byPath.get('/dev/null')!.mode).toBe(0o020666);
    // Every inode: root's, and the epoch (several paths, including a device and the root).
    for (const p of ['/', '/bin/busybox', '/bin/sh', '/dev/console', '/tmp', '/etc/passwd', "/a dir/it's a file", '/lost+found']) {
      const s = await statInImage(env, img, p);
      expect(statField(s, /User:\s+(\d+)/), p).toBe('0');
      expect(statField(s, /Group:\s+(\d+)/), p).toBe('0');
      for (const t of ['ctime', 'atime', 'mtime', 'crtime']) expect(statField(s, new RegExp(`${t}: 0x([0-9a-f]+):`)), `${p} ${t}`).toBe(EPOCH.toString(16));
    }
  });

  it('reports sizes, inodes, files and a sha256 equal to sha256sum', async () => {
    const st = await stat(first.path);
    expect(first.apparentBytes).toBe(64 * MiB);
    expect(st.size).toBe(64 * MiB);
    expect(first.allocatedBytes).toBe(st.blocks * 512);
    expect(first.allocatedBytes).toBeLessThan(10 * MiB);
    expect(first.inodesUsed).toBe(inodesUsed(await dumpe2fsHeader(env, first.path)));
    const tree = await describeTree(staging);
    expect(first.files).toBe(tree.length + DEVICES.length);
    expect(first.sha256).toBe(await sha256File(first.path));
    expect((await run(env, 'sha256sum', [first.path])).stdout.split(' ')[0]).toBe(first.sha256);
    expect(first.uuid).toBe(deterministicUuid(HASH, 64 * MiB, 'busybox'));
    const header = await dumpe2fsHeader(env, first.path);
    expect(header.get('Filesystem UUID')).toBe(first.uuid);
    expect(header.get('Filesystem volume name')).toBe('busybox');
    expect(ctx.lines.some((l) => l.startsWith('info populating ') && l.endsWith(' (rootless)'))).toBe(true);
    expect(await leftovers(outDir)).toEqual([]);
    expect(ctx.cleanup.size).toBe(0);
  });

  it('hashes sparse files like sha256sum, holes and all', async () => {
    const f = join(ctx.root, 'sparse');
    await writeFile(f, 'head');
    await run(env, 'truncate', ['-s', '20M', f]);
    await run(env, 'dd', ['if=/dev/urandom', `of=${f}`, 'bs=4096', 'seek=3000', 'count=3', 'conv=notrunc', 'status=none']);
    expect(await sha256Sparse(env, f)).toBe(await sha256File(f));
  });

  it('is reproducible: a second build, later and from a copy of the tree, is byte-identical', async () => {
    await new Promise((r) => setTimeout(r, 1100)); // another second of wall-clock time
    const copy = join(ctx.root, 'staging-copy');
    await run(env, 'cp', ['-a', staging, copy]); // -a: hard links stay hard links
    // Other times on every entry (and new ctimes, inode numbers): the image must not change.
    await run(env, 'find', [copy, '-exec', 'touch', '-h', '-d', '@1000000000', '{}', '+']);
    const again = await imageStage(input(copy, join(outDir, 'b.img')), ctx);
    expect(again.sha256).toBe(first.sha256);
    expect(again.uuid).toBe(first.uuid);
    // The staging tree was not touched (its builder's times are still there).
    expect((await stat(join(staging, 'etc/passwd'))).mtime.getFullYear()).toBe(2001);
  });

  it('derives another UUID (and image) from another content hash', async () => {
    const other = await imageStage(input(staging, join(outDir, 'c.img'), { contentHash: 'b'.repeat(64) }), ctx);
    expect(other.uuid).not.toBe(first.uuid);
    expect(other.sha256).not.toBe(first.sha256);
  });

  it('refuses names debugfs cannot quote, naming the path, before writing anything', async () => {
    const c = await makeTestContext();
    try {
      const s = await makeStaging(join(c.root, 'staging'));
      await writeFile(join(s, 'etc/say "hi"'), 'x');
      const out = join(c.root, 'q.img');
      const err = await imageStage(input(s, out), c).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(DomuError);
      expect((err as Error).message).toContain('say \\"hi\\"');
      expect(await readdir(c.root)).toEqual(['staging']);
    } finally {
      await c.dispose();
    }
  });

  it.skipIf(!isRoot)('gives root ownership when run by an unprivileged user (nobody)', async () => {
    const base = await tempDir('domu-nobody-');
    try {
      await chmod(base, 0o777);
      const s = await makeStaging(join(base, 'staging'));
      await run(env, 'chown', ['-R', 'nobody:nogroup', s]);
      const out = join(base, 'out');
      await mkdir(out);
      await chmod(out, 0o777);
      const script = join(base, 'build.mts');
      const stage = pathToFileURL(resolve('src/stages/image.ts')).href;
      const helper = pathToFileURL(resolve('test/helpers/context.ts')).href;
      await writeFile(
        script,
        `import { imageStage } from ${JSON.stringify(stage)};
import { makeTestContext } from ${JSON.stringify(helper)};
const ctx = await makeTestContext();
try {
  const input = JSON.parse(process.argv[2]);
  try {
    const out = await imageStage(input, ctx);
    console.log(JSON.stringify({ ok: out, uid: process.getuid() }));
  } catch (e) {
    console.log(JSON.stringify({ error: String(e && e.message), uid: process.getuid() }));
  }
} finally {
  await ctx.dispose();
}
`,
      );
      await chmod(script, 0o644);
      const child = async (i: ImageInput) => {
        const r = await run(env, 'setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', process.execPath, '--import', 'tsx', script, JSON.stringify(i)], { cwd: resolve('.') });
        return JSON.parse(r.stdout.trim().split('\n').pop()!) as { ok?: ImageOutput; error?: string; uid: number };
      };
      const img = join(out, 'nobody.img');
      const r = await child(input(s, img, { populate: 'auto' }));
      expect(r.uid).toBe(65534);
      expect(r.error).toBeUndefined();
      expect(r.ok!.populate).toBe('rootless');
      expect((await stat(img)).uid).toBe(65534); // really written by nobody
      await e2fsckCheck(env, img);
      const all = await listImage(env, img);
      expect(all.length).toBeGreaterThan(15);
      for (const e of all) expect([e.path, e.uid, e.gid]).toEqual([e.path, 0, 0]);
      const root = await statInImage(env, img, '/');
      expect(statField(root, /User:\s+(\d+)/)).toBe('0');
      // Same content, same inputs: the same bytes as root's build of the same tree.
      const asRoot = await imageStage(input(s, join(base, 'root.img'), { populate: 'auto' }), ctx);
      expect(r.ok!.sha256).toBe(asRoot.sha256);
      // Loop mounting is for root only.
      const m = await child(input(s, join(out, 'm.img'), { populate: 'mount' }));
      expect(m.error).toMatch(/loop-mount population needs root; use populate: rootless/);
      expect(await readdir(out)).toEqual(['nobody.img']);
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });
});

describe('size and failures', () => {
  it('refuses a size that cannot hold the tree before writing anything, and suggests one that can', async () => {
    const c = await makeTestContext();
    try {
      const s = await makeStaging(join(c.root, 'staging'), { bigFiles: 6 });
      const out = join(c.root, 'out');
      await mkdir(out);
      const img = join(out, 'small.img');
      await writeFile(img, 'the previous image\n');
      const err = await imageStage(input(s, img, { size: 6 * MiB }), c).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InputError);
      const m = /^image\.size 6M is too small for the root file system: it needs at least (\S+) \(use --set image\.size=(\S+)\)$/.exec((err as Error).message);
      expect(m, (err as Error).message).not.toBeNull();
      expect(await readdir(out)).toEqual(['small.img']);
      expect(await readFile(img, 'utf8')).toBe('the previous image\n');
      expect(c.lines.some((l) => /\$ mke2fs (?!-n|-V)/.test(l))).toBe(false);
      // The suggested size works.
      const { parseSize } = await import('../../src/core/size.js');
      const ok = await imageStage(input(s, img, { size: parseSize(m![2]!) }), c);
      expect(ok.apparentBytes).toBe(parseSize(m![2]!));
      // The minimum it named is not far from what the tree needs.
      expect(parseSize(m![1]!)).toBeLessThan(32 * MiB);
    } finally {
      await c.dispose();
    }
  });

  it('refuses a device node that collides with a file of the tree', async () => {
    const c = await makeTestContext();
    try {
      const s = await makeStaging(join(c.root, 'staging'));
      await writeFile(join(s, 'dev/console'), '');
      await expect(imageStage(input(s, join(c.root, 'x.img')), c)).rejects.toThrow(/\/dev\/console is also in the staging tree/);
    } finally {
      await c.dispose();
    }
  });

  it('creates missing parent directories of device nodes', async () => {
    const c = await makeTestContext();
    try {
      const s = await makeStaging(join(c.root, 'staging'));
      await rm(join(s, 'dev'), { recursive: true });
      const out = await imageStage(input(s, join(c.root, 'd.img'), { devices: [...DEVICES, { path: '/dev/pts/ptmx', type: 'c', mode: 0o666, uid: 0, gid: 5, major: 5, minor: 2 }] }), c);
      const all = new Map((await listImage(env, out.path)).map((e) => [e.path, e]));
      expect(all.get('/dev')!.mode).toBe(0o040755);
      expect(all.get('/dev/pts')!.uid).toBe(0);
      expect(all.get('/dev/pts/ptmx')).toMatchObject({ mode: 0o020666, uid: 0, gid: 5 });
    } finally {
      await c.dispose();
    }
  });

  it('undoes everything when aborted during population (rootless), keeping the previous image', async () => {
    const c = await makeTestContext();
    try {
      const s = await makeStaging(join(c.root, 'staging'));
      const out = join(c.root, 'out');
      await mkdir(out);
      const img = join(out, 'a.img');
      await writeFile(img, 'previous\n');
      const info = c.log.info;
      c.log.info = (msg: string) => {
        info(msg);
        if (msg.startsWith('populating ')) c.controller.abort(new AbortedError('test'));
      };
      await expect(imageStage(input(s, img), c)).rejects.toBeInstanceOf(AbortedError);
      expect(await readdir(out)).toEqual(['a.img']);
      expect(await readFile(img, 'utf8')).toBe('previous\n');
      expect(c.cleanup.size).toBe(0);
    } finally {
      await c.dispose();
    }
  });
});

describe.skipIf(!isRoot)('loop-mount population', () => {
  let mounted: ImageOutput;

  beforeAll(async () => {
    mounted = await imageStage(input(staging, join(outDir, 'm.img'), { populate: 'mount' }), ctx);
  });

  it('gives the same files, modes, owners and link targets as rootless', async () => {
    expect(mounted.populate).toBe('mount');
    expect(mounted.reproducible).toBe(false);
    await e2fsckCheck(env, mounted.path);
    const a = strip(await listImage(env, first.path));
    const b = strip(await listImage(env, mounted.path));
    expect(b).toEqual(a);
    // Content and symlink targets: dump both trees (rdump skips device nodes; compared above).
    const da = join(ctx.root, 'dump-a');
    const db = join(ctx.root, 'dump-b');
    await mkdir(da);
    await mkdir(db);
    await run(env, 'debugfs', ['-R', `rdump / ${da}`, first.path]);
    await run(env, 'debugfs', ['-R', `rdump / ${db}`, mounted.path]);
    const ta = await describeTree(da);
    expect(ta.find((e) => e.path === 'bin/sh')?.target).toBe('busybox');
    expect(ta.find((e) => e.path === 'sbin/long-link')?.target).toMatch(/^\.\.\/x{80}\/long\/target$/);
    expect(diffTrees(ta, await describeTree(db))).toEqual([]);
    const con = await statInImage(env, mounted.path, '/dev/console');
    expect(con).toMatch(/Type: character special/);
    expect(con).toMatch(/Device major\/minor number: 0*5:0*1\b/);
    expect(mounted.files).toBe(first.files);
    expect(mounted.inodesUsed).toBe(first.inodesUsed);
  });

  it('undoes mount, loop device and temp file when aborted during population', async () => {
    const c = await makeTestContext();
    try {
      const s = await makeStaging(join(c.root, 'staging'), { bigFiles: 24 });
      const out = join(c.root, 'out');
      await mkdir(out);
      const img = join(out, 'a.img');
      await writeFile(img, 'previous\n');
      let tmp: string | undefined;
      const info = c.log.info;
      const debug = c.log.debug;
      c.log.info = (msg: string) => {
        info(msg);
        const m = /^populating (\S+) \(mount\)$/.exec(msg);
        if (m) tmp = m[1];
      };
      // Abort while cp is copying into the mounted image.
      c.log.debug = (msg: string) => {
        debug(msg);
        if (msg.startsWith('$ cp -a')) setTimeout(() => c.controller.abort(new AbortedError('test')), 5);
      };
      await expect(imageStage(input(s, img, { populate: 'mount' }), c)).rejects.toBeInstanceOf(AbortedError);
      expect(tmp).toBeDefined();
      const mnt = /\$ mount .* (\S+)$/.exec(c.lines.find((l) => l.startsWith('debug $ mount '))!)![1]!;
      expect(await readFile('/proc/self/mountinfo', 'utf8')).not.toContain(mnt);
      await expect(lstat(mnt)).rejects.toThrow(/ENOENT/);
      expect((await run(env, 'losetup', ['-j', tmp!])).stdout.trim()).toBe('');
      expect(await readdir(out)).toEqual(['a.img']);
      expect(await readFile(img, 'utf8')).toBe('previous\n');
      expect(c.cleanup.size).toBe(0);
      expect(c.lines.some((l) => l.includes('cleanup: unmount'))).toBe(true);
      expect(c.lines.some((l) => l.startsWith('debug $ chown'))).toBe(false); // cp was stopped
    } finally {
      await c.dispose();
    }
  });
});

