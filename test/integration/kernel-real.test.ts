// The real Debian kernel: linux-image-amd64 resolved through a private binary apt configuration,
// downloaded and unpacked into the shared test cache (about 70 MB the first time on a machine).
// Checks the release agreement (bzImage header = modules directory), the cache hit without apt,
// that the system's apt configuration and state are untouched, and our .modinfo reader against
// kmod's `modinfo -F` on 50 modules chosen with a fixed seed, plain and xz/zstd-compressed.
import { existsSync, lstatSync, readdirSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, relative } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomuError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { fetchKernelPackage, kernelReleaseFromImage, type KernelPackage } from '../../src/kernel/kernel.js';
import { memoryLogger } from '../../src/core/log.js';
import { readModinfo, type ModuleInfo } from '../../src/kernel/modinfo.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { makeTestContext, tempDir, mulberry32 } from '../helpers/context.js';
import { getKernelPackage, TEST_KERNEL_PACKAGE } from '../helpers/kernel-package.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

/** Every path under `root` with its size and mtime (lstat, symlinks not followed). */
function snapshot(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  if (!existsSync(root)) return out;
  const walk = (d: string) => {
    for (const n of readdirSync(d).sort()) {
      const p = join(d, n);
      const st = lstatSync(p);
      out[relative(root, p)] = `${st.mode}:${st.size}:${st.mtimeMs}`;
      if (st.isDirectory()) walk(p);
    }
  };
  walk(root);
  return out;
}


async function listModules(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isFile() && /\.ko(\.(xz|zst|gz))?$/.test(e.name))
    .map((e) => join(e.parentPath, e.name))
    .sort();
}

/** kmod's view of one field: `modinfo -F field file`, one value per line. */
async function kmodField(file: string, field: string): Promise<string[]> {
  const r = await run(env, 'modinfo', ['-F', field, file], { quiet: true });
  return r.stdout === '' ? [] : r.stdout.split('\n');
}

async function expectSameAsKmod(file: string, info: ModuleInfo): Promise<void> {
  const [name, depends, vermagic, alias] = await Promise.all([kmodField(file, 'name'), kmodField(file, 'depends'), kmodField(file, 'vermagic'), kmodField(file, 'alias')]);
  expect(name, `${file}: name`).toEqual([info.name]);
  expect(depends.join(','), `${file}: depends`).toBe(info.depends.join(','));
  expect(vermagic, `${file}: vermagic`).toEqual([info.vermagic]);
  expect(alias, `${file}: alias`).toEqual(info.aliases);
}

let kernel: KernelPackage;
let modules: string[];
const systemAptBefore = { etc: {} as Record<string, string>, lists: {} as Record<string, string> };
let resolveLines: string[] = [];
/** A private cache for resolving through apt here, without touching the shared memo. */
let privateCache: string | undefined;
/** What apt resolved in it. */
let again: KernelPackage;

/** `dpkg --compare-versions a op b`. */
async function debVersionIs(a: string, op: 'gt' | 'eq', b: string): Promise<boolean> {
  const r = await execa('dpkg', ['--compare-versions', a, op, b], { reject: false });
  return r.exitCode === 0;
}

beforeAll(async () => {
  systemAptBefore.etc = snapshot('/etc/apt');
  systemAptBefore.lists = snapshot('/var/lib/apt/lists');
  kernel = await getKernelPackage();
  modules = await listModules(kernel.modules);
  // Resolve through apt once for real in this file, in a PRIVATE cache without a memo, so that
  // apt-get update and apt-cache run with the private options while the shared memo (which the
  // other test files read) stays as it is. Its kernels/ are hard links to the shared entries
  // (no 70 MB copy, no download when the archive still offers the same package); a lookup only
  // ever replaces files there by rename, never writes into a linked file.
  privateCache = await mkdtemp(join(dirname(TEST_CACHE_DIR), 'domu-kernel-real-'));
  await mkdir(join(privateCache, 'kernels'));
  for (const name of await readdir(join(TEST_CACHE_DIR, 'kernels'))) {
    if (name.startsWith('.')) continue; // temporaries of other processes
    const from = join(TEST_CACHE_DIR, 'kernels', name);
    const to = join(privateCache, 'kernels', name);
    const linked = await execa('cp', ['-al', from, to], { reject: false });
    if (linked.exitCode !== 0) {
      await rm(to, { recursive: true, force: true });
      await execa('cp', ['-a', '--reflink=auto', from, to]); // another file system: a copy
    }
  }
  const ctx = await makeTestContext({ cacheDir: privateCache });
  try {
    again = await fetchKernelPackage(ctx, { package: TEST_KERNEL_PACKAGE });
    resolveLines = [...ctx.lines];
  } finally {
    await ctx.dispose();
  }
});

afterAll(async () => {
  if (privateCache) await rm(privateCache, { recursive: true, force: true });
});

describe('fetchKernelPackage (real Debian linux-image-amd64)', () => {
  it('gives an image and modules of the same release', async () => {
    expect(kernel.release).toMatch(/^\d+\.\d+\.\d+[-+][\w.+~-]*-amd64$/);
    expect(kernel.package).toBe(`linux-image-${kernel.release}`);
    expect(basename(kernel.modules)).toBe(kernel.release);
    expect(basename(kernel.image)).toBe(`vmlinuz-${kernel.release}`);
    expect(await kernelReleaseFromImage(kernel.image)).toBe(kernel.release);
    expect(existsSync(join(kernel.root, 'boot', `config-${kernel.release}`))).toBe(true);
    expect(modules.length).toBeGreaterThan(3000);
  });

  it('apt, asked again, resolves this package, or a newer one that is as consistent', async () => {
    const memo = JSON.parse(await readFile(join(privateCache!, 'kernel-memos', `${TEST_KERNEL_PACKAGE}.json`), 'utf8')) as { package: string; version: string; key: string };
    expect(memo).toMatchObject({ package: again.package, version: again.version });
    expect(again.root).toBe(join(privateCache!, 'kernels', memo.key));
    expect(again.release).toMatch(/^\d+\.\d+\.\d+[-+][\w.+~-]*-amd64$/);
    expect(again.package).toBe(`linux-image-${again.release}`);
    expect(again.image).toBe(join(again.root, 'boot', `vmlinuz-${again.release}`));
    expect(basename(again.modules)).toBe(again.release);
    expect(await kernelReleaseFromImage(again.image)).toBe(again.release);
    const rel = (k: KernelPackage) => ({ ...k, root: '', image: relative(k.root, k.image), modules: relative(k.root, k.modules) });
    if (again.package === kernel.package && (await debVersionIs(again.version, 'eq', kernel.version))) {
      // The same package: the same entry (its hard-linked copy), so nothing was downloaded.
      expect(rel(again)).toEqual(rel(kernel));
      expect(basename(again.root)).toBe(basename(kernel.root));
      expect(resolveLines.some((l) => l.includes(`kernel: ${again.package} ${again.version} from the cache`))).toBe(true);
      expect(resolveLines.filter((l) => /kernel: downloading /.test(l))).toEqual([]);
    } else {
      // Debian's archive moved on since getKernelPackage() resolved it: a newer package.
      expect(await debVersionIs(again.version, 'gt', kernel.version), `${again.package} ${again.version} after ${kernel.package} ${kernel.version}`).toBe(true);
      expect(basename(again.root)).not.toBe(basename(kernel.root));
    }
  });

  it('resolved through the private apt configuration and left the system apt untouched', () => {
    const apt = resolveLines.filter((l) => /\$ apt-(get|cache) /.test(l));
    expect(apt.some((l) => l.includes(' update'))).toBe(true);
    for (const l of apt) expect(l, l).toContain(`Dir::State::Lists=${privateCache}/`);
    expect(snapshot('/etc/apt')).toEqual(systemAptBefore.etc);
    expect(snapshot('/var/lib/apt/lists')).toEqual(systemAptBefore.lists);
  });

  it('a second call is a cache hit: no apt-get or apt-cache runs', async () => {
    const ctx = await makeTestContext({ cacheDir: TEST_CACHE_DIR });
    try {
      const hit = await fetchKernelPackage(ctx, { package: TEST_KERNEL_PACKAGE });
      expect(hit).toEqual(kernel);
      expect(ctx.lines.filter((l) => /\$ (apt-get|apt-cache|dpkg-deb) /.test(l))).toEqual([]);
    } finally {
      await ctx.dispose();
    }
  });
});

describe('readModinfo against kmod modinfo', () => {
  it('agrees on name, depends, vermagic and alias for 50 modules chosen with a fixed seed', async () => {
    const rand = mulberry32(20240601);
    const pool = [...modules];
    const sample: string[] = [];
    while (sample.length < 50 && pool.length) sample.push(pool.splice(Math.floor(rand() * pool.length), 1)[0]!);
    for (const file of sample) {
      const info = await readModinfo(file, env);
      expect(info.release, file).toBe(kernel.release);
      await expectSameAsKmod(file, info);
    }
  });

  it('xen-netfront: no depends, name xen_netfront, aliases xennet and xen:vif', async () => {
    const info = await readModinfo(join(kernel.modules, 'kernel/drivers/net/xen-netfront.ko'), env);
    expect(info.depends).toEqual([]);
    expect(info.name).toBe('xen_netfront');
    expect(info.aliases).toEqual(expect.arrayContaining(['xennet', 'xen:vif']));
    expect(info.intree).toBe(true);
  });

  it("ext4: depends and softdeps as kmod's modinfo reads them (jbd2 among the depends)", async () => {
    const file = join(kernel.modules, 'kernel/fs/ext4/ext4.ko');
    const info = await readModinfo(file, env);
    // kmod: one comma-separated `depends` line; `softdep` lines like `pre: a b post: c`.
    const depends = (await kmodField(file, 'depends')).flatMap((l) => l.split(',')).filter(Boolean);
    const soft = { pre: [] as string[], post: [] as string[] };
    for (const line of await kmodField(file, 'softdep')) {
      let into: string[] | undefined;
      for (const word of line.trim().split(/\s+/)) {
        if (word === 'pre:') into = soft.pre;
        else if (word === 'post:') into = soft.post;
        else if (word) into?.push(word);
      }
    }
    expect(depends).toContain('jbd2'); // ext4's journal: a real dependency in every kernel
    expect(info.depends).toEqual(depends);
    expect(info.softdepPre).toEqual(soft.pre);
    expect(info.softdepPost).toEqual(soft.post);
    expect(info.license).toBe('GPL');
  });

  describe('compressed copies', () => {
    let dir: string;
    const picks = ['kernel/fs/ext4/ext4.ko', 'kernel/drivers/net/xen-netfront.ko', 'kernel/drivers/block/xen-blkfront.ko', 'kernel/fs/jbd2/jbd2.ko', 'kernel/drivers/block/virtio_blk.ko'];
    beforeAll(async () => {
      dir = await tempDir('domu-kmod-');
      for (const rel of picks) {
        const copy = join(dir, basename(rel));
        await copyFile(join(kernel.modules, rel), copy);
        await run(env, 'xz', ['-k', copy]);
        await run(env, 'zstd', ['-q', copy]);
      }
    });
    afterAll(async () => {
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it.each(picks)('%s: .ko.xz and .ko.zst read like the plain module and like kmod', async (rel) => {
      const plain = await readModinfo(join(kernel.modules, rel), env);
      for (const ext of ['xz', 'zst']) {
        const file = join(dir, `${basename(rel)}.${ext}`);
        const info = await readModinfo(file, env);
        expect({ ...info, file: '' }).toEqual({ ...plain, file: '' });
        await expectSameAsKmod(file, info); // Debian's kmod 30 is built +XZ +ZSTD
      }
    });
  });
});

describe('kernelReleaseFromImage on broken input', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await tempDir('domu-bzimage-');
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });
  const fails = async (file: string, message: RegExp) => {
    const e: unknown = await kernelReleaseFromImage(file).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(DomuError);
    expect((e as Error).message).toContain(file);
    expect((e as Error).message).toMatch(message);
  };

  it('rejects a file that is not a bzImage', async () => {
    const f = join(dir, 'notkernel');
    await writeFile(f, Buffer.alloc(4096, 1));
    await fails(f, /not an x86 bzImage/);
  });

  it('rejects a truncated header', async () => {
    const f = join(dir, 'short');
    await writeFile(f, Buffer.alloc(100));
    await fails(f, /truncated/);
  });

  it('rejects a header whose version string runs past the end of the file', async () => {
    const f = join(dir, 'cut');
    const buf = Buffer.alloc(0x400);
    buf.writeUInt16LE(0xaa55, 0x1fe);
    buf.write('HdrS', 0x202, 'latin1');
    buf.writeUInt16LE(0x20f, 0x206);
    buf.writeUInt16LE(0x1f0, 0x20e); // string at 0x3f0, 16 bytes before the end
    buf.fill(0x41, 0x3f0);
    await writeFile(f, buf);
    await fails(f, /not NUL-terminated/);
  });

  it('reads a synthetic header', async () => {
    const f = join(dir, 'synthetic');
    const buf = Buffer.alloc(0x400);
    buf.writeUInt16LE(0xaa55, 0x1fe);
    buf.write('HdrS', 0x202, 'latin1');
    buf.writeUInt16LE(0x20f, 0x206);
    buf.writeUInt16LE(0x100, 0x20e);
    buf.write('6.1.0-7-amd64 (debian-kernel@lists.debian.org) #1 SMP\0', 0x300, 'latin1');
    await writeFile(f, buf);
    expect(await kernelReleaseFromImage(f)).toBe('6.1.0-7-amd64');
  });
});
