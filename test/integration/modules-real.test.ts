// The module closure and the modules stage on the real Debian kernel package (about 4000 .ko):
// the index by scanning equals the one from depmod's modules.dep, the closure equals kmod's
// `modprobe --show-depends` after a real `depmod`, and the broken trees (a missing dependency,
// a module of another release, a truncated .ko.xz, a file that is not ELF) fail clearly.
import { existsSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { moduleClosure, transitiveDepends, type Closure } from '../../src/kernel/closure.js';
import { DomuError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { indexModules, normalizeModuleName, type ModuleIndex } from '../../src/kernel/modindex.js';
import { readModinfo } from '../../src/kernel/modinfo.js';
import { modulesStage, resolveModules } from '../../src/stages/modules.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';
import { getKernelHeaders, getKernelPackage } from '../helpers/kernel-package.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';

let kernel: KernelPackage;
let ctx: TestContext;
let dir: string;
/** A hard-linked copy of the package's modules with depmod's files: kmod's view. */
let depmodRoot: string;
let depmodModules: string;

const closureOf = (index: ModuleIndex, names: string[]) => moduleClosure(index, names, { readInfo: (f) => readModinfo(f, ctx) });

/** kmod's answer: the insmod lines of `modprobe --show-depends`, as module names. */
async function modprobeShowDepends(names: string[]): Promise<string[]> {
  const r = await run(ctx, 'modprobe', ['--show-depends', '-d', depmodRoot, '-S', kernel.release, '-a', ...names], { quiet: true });
  return r.stdout
    .split('\n')
    .filter((l) => l.startsWith('insmod '))
    .map((l) => normalizeModuleName(basename(l.split(/\s+/)[1]!).replace(/\.ko(\.\w+)?$/, '')));
}

/** Every module after its hard and pre-soft dependencies that are in the closure. */
function expectTopological(c: Closure): void {
  const pos = new Map(c.modules.map((m, i) => [m.name, i]));
  for (const m of c.modules) {
    for (const d of m.info.depends) {
      const p = pos.get(normalizeModuleName(d));
      expect(p, `${d} (dependency of ${m.name}) is in the closure`).toBeDefined();
      expect(p!, `${d} loads before ${m.name}`).toBeLessThan(pos.get(m.name)!);
    }
  }
}

async function failure(p: Promise<unknown>): Promise<DomuError> {
  const e: unknown = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(DomuError);
  return e as DomuError;
}

/** A copy of the modules tree (hard links: cheap, and the copy's files can be unlinked). */
async function linkedCopy(to: string): Promise<string> {
  await mkdir(to, { recursive: true });
  await run(ctx, 'cp', ['-al', kernel.modules, to]);
  return join(to, kernel.release);
}

beforeAll(async () => {
  kernel = await getKernelPackage();
  ctx = await makeTestContext();
  dir = await tempDir('domu-modules-');
  depmodRoot = join(dir, 'depmod');
  depmodModules = await linkedCopy(join(depmodRoot, 'lib', 'modules'));
  await run(ctx, 'depmod', ['-b', depmodRoot, kernel.release]);
}, 120_000);
afterAll(async () => {
  await ctx?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the module index', () => {
  it('scanning the package tree finds what depmod finds', async () => {
    const scanned = await indexModules(kernel.modules, { env: ctx });
    const fromDep = await indexModules(depmodModules, { env: ctx });
    expect(scanned.source).toBe('scan');
    expect(fromDep.source).toBe('modules.dep');
    expect(scanned.paths.size).toBeGreaterThan(3000);
    expect(new Map([...scanned.paths].sort())).toEqual(new Map([...fromDep.paths].sort()));
    const pairs = (i: ModuleIndex) => new Set(i.aliases.map(([a, m]) => `${a} ${m}`));
    expect(pairs(scanned)).toEqual(pairs(fromDep));
    expect(scanned.builtin.size).toBeGreaterThan(100);
  });

  it('is cached by the tree: the second run reads it back, a changed file invalidates it', async () => {
    const copy = await linkedCopy(join(dir, 'cached'));
    const first = await indexModules(copy, { cache: ctx.cache, env: ctx });
    const second = await indexModules(copy, { cache: ctx.cache, env: ctx });
    expect(first.source).toBe('scan');
    expect(second.source).toBe('cached');
    expect(second.paths).toEqual(first.paths);
    expect(second.aliases).toEqual(first.aliases);
    // Replace one file by a new one (a new inode: the copy's files are hard links to the package).
    const changed = join(copy, 'kernel/fs/mbcache.ko');
    const bytes = await readFile(changed);
    await unlink(changed);
    await writeFile(changed, bytes);
    expect((await indexModules(copy, { cache: ctx.cache, env: ctx })).source).toBe('scan');
  });
});

describe('the closure (real modules, against kmod)', () => {
  let index: ModuleIndex;
  beforeAll(async () => {
    index = await indexModules(kernel.modules, { cache: ctx.cache, env: ctx });
  });

  it('xen-netfront: empty depends, a closure of one (the reference lab check)', async () => {
    const c = await closureOf(index, ['xen-netfront']);
    expect(c.modules.map((m) => m.name)).toEqual(['xen_netfront']);
    expect(c.modules[0]!.info.depends).toEqual([]);
    expect(c.modules[0]!.path).toBe('kernel/drivers/net/xen-netfront.ko');
    expect(await modprobeShowDepends(['xen-netfront'])).toEqual(['xen_netfront']);
  });

  it('ext4: jbd2, mbcache, crc16 and the softdep crypto-crc32c → crc32c_generic, in load order', async () => {
    const c = await closureOf(index, ['ext4']);
    const names = c.modules.map((m) => m.name);
    expect(names).toEqual(expect.arrayContaining(['jbd2', 'mbcache', 'crc16', 'crc32c_generic', 'ext4']));
    expect(names.at(-1)).toBe('ext4');
    expectTopological(c);
    // The softdep: crc32c loads before jbd2 and ext4.
    expect(names.indexOf('crc32c_generic')).toBeLessThan(names.indexOf('jbd2'));
    expect(c.modules.find((m) => m.name === 'crc32c_generic')!.kind).toBe('softdep');
    expect(new Set(names)).toEqual(new Set(await modprobeShowDepends(['ext4'])));
  });

  it('[xen-netfront, xen-blkfront, ext4] is the same set as modprobe --show-depends, in a valid order', async () => {
    const names = ['xen-netfront', 'xen-blkfront', 'ext4'];
    const c = await closureOf(index, names);
    expect(new Set(c.modules.map((m) => m.name))).toEqual(new Set(await modprobeShowDepends(names)));
    expectTopological(c);
    // Index from modules.dep gives the same answer.
    const viaDep = await closureOf(await indexModules(depmodModules, { env: ctx }), names);
    expect(viaDep.modules.map((m) => m.name)).toEqual(c.modules.map((m) => m.name));
  });

  it('resolves - and _ variants and aliases (xennet), and reports built-in modules', async () => {
    expect((await closureOf(index, ['xen_netfront'])).modules.map((m) => m.name)).toEqual(['xen_netfront']);
    const alias = await closureOf(index, ['xennet']);
    expect(alias.modules.map((m) => m.name)).toEqual(['xen_netfront']);
    expect(alias.requests).toEqual([{ request: 'xennet', modules: ['xen_netfront'] }]);
    const builtinName = [...index.builtin][0]!;
    const b = await closureOf(index, [builtinName]);
    expect(b.modules).toEqual([]);
    expect(b.builtin.map((x) => x.name)).toEqual([builtinName]);
  });

  it('an unknown name fails with suggestions', async () => {
    const e = await failure(closureOf(index, ['xen-netfrnt']));
    expect(e.message).toBe(`no kernel module or alias "xen-netfrnt" in ${kernel.modules}`);
    expect(e.hint).toContain('xen_netfront');
  });

  it('modules.dep lines for the guest list every transitive dependency, last-loaded first', async () => {
    const c = await closureOf(index, ['ext4']);
    const deps = transitiveDepends(c);
    expect(deps.get('ext4')!.map((m) => m.name).sort()).toEqual(['crc16', 'jbd2', 'mbcache']);
    expect(deps.get('crc16')).toEqual([]);
    const depmodLine = (await readFile(join(depmodModules, 'modules.dep'), 'utf8')).split('\n').find((l) => l.startsWith('kernel/fs/ext4/ext4.ko:'))!;
    expect(depmodLine.split(/\s+/).slice(1).sort()).toEqual(deps.get('ext4')!.map((m) => m.path).sort());
  });
});

describe('broken trees and modules', () => {
  it('a tree without jbd2 fails naming the chain ext4 → jbd2 → missing', async () => {
    const copy = await linkedCopy(join(dir, 'nojbd2'));
    await unlink(join(copy, 'kernel/fs/jbd2/jbd2.ko'));
    const index = await indexModules(copy, { env: ctx });
    const e = await failure(closureOf(index, ['ext4']));
    expect(e.message).toBe('missing module dependency: ext4 → jbd2 → missing');
  });

  it('a module built for another release fails the vermagic check, showing both; --force-vermagic warns', async () => {
    const copy = await linkedCopy(join(dir, 'vermagic'));
    const file = join(copy, 'kernel/drivers/net/xen-netfront.ko');
    const bytes = await readFile(file);
    await unlink(file); // a hard link: write a new file, not through the link
    // Another release of the same length: the last digit before the flavour (6.1.0-57-amd64 →
    // 6.1.0-58-amd64, 6.12.9-amd64 → 6.12.0-amd64); in a release without a flavour, its last digit.
    const cut = kernel.release.lastIndexOf('-');
    const [head, flavour] = cut > 0 ? [kernel.release.slice(0, cut), kernel.release.slice(cut)] : [kernel.release, ''];
    const other = head.replace(/\d(?!.*\d)/, (d) => String((Number(d) + 1) % 10)) + flavour;
    expect(other).not.toBe(kernel.release);
    expect(other.length).toBe(kernel.release.length);
    const at = bytes.indexOf(`vermagic=${kernel.release}`);
    expect(at).toBeGreaterThan(0);
    bytes.write(`vermagic=${other}`, at, 'latin1');
    await writeFile(file, bytes);

    const input = { release: kernel.release, modulesDir: copy, requests: ['xen-netfront'] };
    const e = await failure(resolveModules(input, ctx));
    expect(e.message).toBe(`vermagic mismatch: the guest kernel is ${kernel.release}, but xen_netfront (${file}) built for ${other}`);
    expect(e.hint).toContain('--force-vermagic');
    const forced = await resolveModules({ ...input, forceVermagic: true }, ctx);
    expect(forced.verdicts).toEqual([{ name: 'xen_netfront', path: 'kernel/drivers/net/xen-netfront.ko', release: other, verdict: 'mismatch (forced)' }]);
    expect(ctx.lines.some((l) => l.includes('--force-vermagic: xen_netfront built for'))).toBe(true);
  });

  it('a truncated .ko.xz and a .ko that is not ELF are clear errors', async () => {
    const copy = join(dir, 'broken', kernel.release);
    await mkdir(join(copy, 'kernel'), { recursive: true });
    const xz = join(copy, 'kernel', 'mbcache.ko');
    await copyFile(join(kernel.modules, 'kernel/fs/mbcache.ko'), xz);
    await run(ctx, 'xz', [xz]);
    const full = await readFile(`${xz}.xz`);
    await writeFile(`${xz}.xz`, full.subarray(0, full.length >> 1));
    let e = await failure(indexModules(copy, { env: ctx }));
    expect(e.message).toMatch(new RegExp(`^${xz}\\.xz: truncated or corrupt xz data`));
    await rm(`${xz}.xz`);
    await writeFile(join(copy, 'kernel', 'fake.ko'), '#!/bin/sh\necho not a module\n');
    e = await failure(indexModules(copy, { env: ctx }));
    expect(e.message).toBe(`${join(copy, 'kernel', 'fake.ko')}: not an ELF file`);
  });
});

describe('modulesStage: the guest layout', () => {
  it('lays out the closure, modules.dep, the flat copy and /etc/modules; zstd is decompressed, xz kept when busybox reads it', async () => {
    // A small tree of compressed modules: ext4's closure in .ko.zst, xen-netfront in .ko.xz.
    const tree = join(dir, 'compressed', kernel.release);
    const wanted = ['kernel/fs/ext4/ext4.ko', 'kernel/fs/jbd2/jbd2.ko', 'kernel/fs/mbcache.ko', 'kernel/lib/crc16.ko', 'kernel/crypto/crc32c_generic.ko', 'kernel/arch/x86/crypto/crc32c-intel.ko'];
    for (const rel of wanted) {
      await mkdir(dirname(join(tree, rel)), { recursive: true });
      await copyFile(join(kernel.modules, rel), join(tree, rel));
      await run(ctx, 'zstd', ['-q', '--rm', join(tree, rel)]);
    }
    const nf = 'kernel/drivers/net/xen-netfront.ko';
    await mkdir(dirname(join(tree, nf)), { recursive: true });
    await copyFile(join(kernel.modules, nf), join(tree, nf));
    await run(ctx, 'xz', [join(tree, nf)]);
    await copyFile(join(kernel.modules, 'modules.builtin'), join(tree, 'modules.builtin'));

    const out = await modulesStage({ release: kernel.release, modulesDir: tree, requests: ['xen-netfront', 'ext4'], guestLoads: new Set(['xz']) }, ctx);
    const base = `lib/modules/${kernel.release}`;
    const dests = out.files.map((f) => f.dest).sort();
    expect(dests).toEqual(
      [
        `${base}/kernel/drivers/net/xen-netfront.ko.xz`,
        ...wanted.map((w) => `${base}/${w}`),
        `${base}/modules.dep`,
        'lib/modules/xen-netfront.ko',
        'lib/modules/ext4.ko',
      ].sort(),
    );
    // Every file the guest gets is what the kernel shipped, decompressed where needed.
    for (const f of out.files) {
      if (f.dest.endsWith('modules.dep')) continue;
      const data = await readFile(f.src);
      if (f.dest.endsWith('.xz')) expect(data.subarray(0, 6)).toEqual(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
      else expect(data.subarray(0, 4).toString('latin1'), f.dest).toBe('\x7fELF');
    }
    const flat = out.files.find((f) => f.dest === 'lib/modules/xen-netfront.ko')!;
    expect(await readFile(flat.src)).toEqual(await readFile(join(kernel.modules, nf)));

    const dep = await readFile(out.files.find((f) => f.dest.endsWith('modules.dep'))!.src, 'utf8');
    const depLines = new Map(dep.trim().split('\n').map((l) => [l.split(':')[0]!, l.split(':')[1]!.trim().split(/\s+/).filter(Boolean).sort()]));
    expect(depLines.get('kernel/fs/ext4/ext4.ko')).toEqual(['kernel/fs/jbd2/jbd2.ko', 'kernel/fs/mbcache.ko', 'kernel/lib/crc16.ko']);
    expect(depLines.get('kernel/drivers/net/xen-netfront.ko.xz')).toEqual([]);

    expect(out.loadOrder[0]).toBe('xen_netfront');
    expect(out.loadOrder.at(-1)).toBe('ext4');
    expect(out.etcModules.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(out.loadOrder);
    expect(out.modules.every((m) => m.verdict === 'ok' && m.release === kernel.release)).toBe(true);
    expect(out.bytes).toBeGreaterThan(0);
    for (const f of out.files) expect(existsSync(f.src), f.src).toBe(true);
    expect((await stat(flat.src)).size).toBeGreaterThan(10_000);
  });
});

describe('modulesStage: an out-of-tree module', () => {
  it('is built against the real linux-headers, checked, resolved with its dependency and laid out under extra/', async () => {
    const headers = await getKernelHeaders();
    const source = join(PROJECT_ROOT, 'test', 'fixtures', 'hello-module');
    const out = await modulesStage({ release: kernel.release, modulesDir: kernel.modules, requests: ['xen-netfront'], sources: [source], buildDir: headers.buildDir }, ctx);
    expect(out.loadOrder).toEqual(['xen_netfront', 'crc16', 'domu_hello']);
    const hello = out.modules.find((m) => m.name === 'domu_hello')!;
    expect(hello).toMatchObject({ dest: `lib/modules/${kernel.release}/extra/domu_hello.ko`, release: kernel.release, verdict: 'ok', kind: 'requested' });
    expect(out.files.map((f) => f.dest)).toContain('lib/modules/domu_hello.ko');
    const dep = await readFile(out.files.find((f) => f.dest.endsWith('/modules.dep'))!.src, 'utf8');
    expect(dep).toContain('extra/domu_hello.ko: kernel/lib/crc16.ko\n');
    // kmod agrees that what landed in the guest is the module we built, for this kernel.
    const file = out.files.find((f) => f.dest.endsWith('/extra/domu_hello.ko'))!.src;
    expect((await run(ctx, 'modinfo', ['-F', 'vermagic', file])).stdout.split(' ')[0]).toBe(kernel.release);
    expect((await run(ctx, 'modinfo', ['-F', 'depends', file])).stdout).toBe('crc16');
  }, 180_000);
});
