// Out-of-tree modules against the real Debian kernel: linux-headers-<release> (with its -common
// and linux-kbuild packages) fetched into the shared test cache, our fixture module built with
// the real kbuild and gcc, and the result checked with kmod's modinfo and depmod.
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, readlink, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomuError, InputError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import { buildExternalModules, checkKernelBuildDir, fetchKernelHeaders, type BuiltModule, type KernelHeaders } from '../../src/kernel/kbuild.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { projectPath } from '../../src/core/paths.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { makeTestContext, tempDir, type TestContext } from '../helpers/context.js';
import { getKernelHeaders, getKernelPackage } from '../helpers/kernel-package.js';
import { describeTree } from '../helpers/tree.js';

const FIXTURE = projectPath('test', 'fixtures', 'hello-module');
const OTHER_RELEASE = '6.1.0-1-amd64';

let kernel: KernelPackage;
let headers: KernelHeaders;
let ctx: TestContext;
let scratch: string;

beforeAll(async () => {
  kernel = await getKernelPackage();
  headers = await getKernelHeaders();
  ctx = await makeTestContext({ cacheDir: TEST_CACHE_DIR });
  scratch = await tempDir('domu-kbuild-');
});
afterAll(async () => {
  await ctx?.dispose();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

/** The error a promise rejects with (fails the test if it resolves). */
async function rejection(p: Promise<unknown>): Promise<DomuError> {
  const e: unknown = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(DomuError);
  return e as DomuError;
}

/** A stand-in for the headers' build directory: a link to each of its entries but `except`. */
async function linkBuildDir(dest: string, except: string[]): Promise<string> {
  await mkdir(dest, { recursive: true });
  for (const n of await readdir(headers.buildDir)) if (!except.includes(n)) await symlink(join(headers.buildDir, n), join(dest, n));
  return dest;
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256').update(await readFile(file)).digest('hex');
}

describe('fetchKernelHeaders (real Debian linux-headers)', () => {
  it('unpacks the headers, -common and linux-kbuild into one relocatable entry of the kernel release', async () => {
    expect(headers.release).toBe(kernel.release);
    expect(headers.package).toBe(`linux-headers-${kernel.release}`);
    expect(headers.buildDir).toBe(join(headers.root, 'usr', 'src', `linux-headers-${kernel.release}`));
    const common = kernel.release.replace(/-[^-]+$/, '-common');
    expect(existsSync(join(headers.root, 'usr', 'src', `linux-headers-${common}`, 'Makefile'))).toBe(true);
    // scripts/ is a relative link into linux-kbuild, resolved inside the entry.
    expect(await realpath(join(headers.buildDir, 'scripts', 'basic', 'fixdep'))).toMatch(new RegExp(`^${headers.root}/usr/lib/linux-kbuild-[^/]+/scripts/basic/fixdep$`));
    // Debian's Makefile includes /usr/src/...-common absolutely; ours must not reach the host.
    expect(await readFile(join(headers.buildDir, 'Makefile'), 'utf8')).not.toMatch(/include\s+\//);
    const links = (await readdir(headers.root, { recursive: true, withFileTypes: true })).filter((e) => e.isSymbolicLink());
    for (const l of links) expect(await readlink(join(l.parentPath, l.name)), join(l.parentPath, l.name)).not.toMatch(/^\//);
    expect(await checkKernelBuildDir(headers.buildDir, kernel.release)).toBe(kernel.release);
  });

  it('a second call is a cache hit: no apt-get, apt-cache or dpkg-deb runs', async () => {
    const c = await makeTestContext({ cacheDir: TEST_CACHE_DIR });
    try {
      expect(await fetchKernelHeaders(c, { release: kernel.release })).toEqual(headers);
      expect(c.lines.filter((l) => /\$ (apt-get|apt-cache|dpkg-deb) /.test(l))).toEqual([]);
    } finally {
      await c.dispose();
    }
  });

  it('the release check refuses the tree of one kernel for another, showing both', async () => {
    const e = await rejection(checkKernelBuildDir(headers.buildDir, OTHER_RELEASE));
    expect(e.message).toContain(kernel.release);
    expect(e.message).toContain(OTHER_RELEASE);
  });

  it('refuses a tree without Module.symvers and without its kbuild scripts, naming what is missing', async () => {
    const tree = await linkBuildDir(join(scratch, 'incomplete'), ['Module.symvers', 'scripts']);
    const e = await rejection(checkKernelBuildDir(tree, kernel.release));
    expect(e.message).toBe(`${tree} is not a usable kernel build directory: no Module.symvers, executable scripts/basic/fixdep`);
  });

  it('a release Debian does not have fails naming the package', async () => {
    const c = await makeTestContext(); // its own cache: nothing is left in the shared one
    try {
      const e = await rejection(fetchKernelHeaders(c, { release: '6.1.0-9999-amd64' }));
      expect(e.message).toBe("Debian's archive has no package linux-headers-6.1.0-9999-amd64");
    } finally {
      await c.dispose();
    }
  });
});

describe('buildExternalModules (real kbuild and gcc against the real headers)', () => {
  let built: BuiltModule[];
  let sourceBefore: Awaited<ReturnType<typeof describeTree>>;
  let entryBefore: Awaited<ReturnType<typeof describeTree>>;
  const leaky = { CROSS_COMPILE: 'domu-no-such-', KBUILD_OUTPUT: '/nonexistent', MAKEFLAGS: '-j1 --jobserver-auth=98,99' };

  beforeAll(async () => {
    sourceBefore = await describeTree(FIXTURE, { mtimes: true });
    entryBefore = await describeTree(headers.root, { mtimes: true });
    // What an enclosing make or a developer's shell may set must not reach kbuild.
    const saved = Object.fromEntries(Object.keys(leaky).map((k) => [k, process.env[k]]));
    Object.assign(process.env, leaky);
    try {
      built = await buildExternalModules(ctx, { source: FIXTURE, buildDir: headers.buildDir, release: kernel.release, jobs: 2 });
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it('builds domu_hello.ko for the guest kernel, depending on crc16, with its alias', () => {
    expect(built.map((b) => b.name)).toEqual(['domu_hello']);
    const [m] = built;
    expect(basename(m!.file)).toBe('domu_hello.ko');
    expect(m!.file.startsWith(`${ctx.workDir}/`)).toBe(true);
    expect(m!.info.release).toBe(kernel.release);
    expect(m!.info.depends).toEqual(['crc16']);
    expect(m!.info.aliases).toEqual(['domu-greeter']);
    expect(m!.info.license).toBe('GPL');
  });

  it("kmod's modinfo agrees with our reader on name, depends, vermagic and alias", async () => {
    const file = built[0]!.file;
    const field = async (f: string) => {
      const r = await run(ctx, 'modinfo', ['-F', f, file], { quiet: true });
      return r.stdout === '' ? [] : r.stdout.split('\n');
    };
    expect(await field('name')).toEqual([built[0]!.info.name]);
    expect((await field('depends')).join(',')).toBe(built[0]!.info.depends.join(','));
    expect(await field('vermagic')).toEqual([built[0]!.info.vermagic]);
    expect(await field('alias')).toEqual(built[0]!.info.aliases);
  });

  it("depmod resolves crc16 against the kernel's own module, with matching symbol versions", async () => {
    const root = join(scratch, 'depmod');
    const mods = join(root, 'lib', 'modules', kernel.release);
    await mkdir(join(mods, 'extra'), { recursive: true });
    await symlink(join(kernel.modules, 'kernel'), join(mods, 'kernel'));
    await run(ctx, 'cp', [built[0]!.file, join(mods, 'extra')]);
    const r = await run(ctx, 'depmod', ['-b', root, '-e', '-E', join(headers.buildDir, 'Module.symvers'), kernel.release], { quiet: true });
    expect(r.stderr).not.toMatch(/unknown symbol|disagrees about version/);
    expect(await readFile(join(mods, 'modules.dep'), 'utf8')).toMatch(/^extra\/domu_hello\.ko: kernel\/lib\/crc16\.ko$/m);
  });

  it("never writes into the user's source directory or the cached headers", async () => {
    expect(await describeTree(FIXTURE, { mtimes: true })).toEqual(sourceBefore);
    expect(await describeTree(headers.root, { mtimes: true })).toEqual(entryBefore);
  });

  it('is reproducible: another build in another scratch directory gives the same bytes', async () => {
    const again = await buildExternalModules(ctx, { source: FIXTURE, buildDir: headers.buildDir, release: kernel.release });
    expect(again[0]!.file).not.toBe(built[0]!.file);
    expect(await sha256(again[0]!.file)).toBe(await sha256(built[0]!.file));
  });

  it('a C syntax error fails with one line naming the file in the source dir, and the log', async () => {
    const dir = join(scratch, 'broken');
    await mkdir(dir);
    await writeFile(join(dir, 'Kbuild'), 'obj-m := broken.o\n');
    await writeFile(join(dir, 'broken.c'), '#include <linux/module.h>\nstatic int __init b_init(void) { return 0 }\nmodule_init(b_init);\nMODULE_LICENSE("GPL");\n');
    const e = await rejection(buildExternalModules(ctx, { source: dir, buildDir: headers.buildDir, release: kernel.release }));
    expect(e).not.toBeInstanceOf(InputError);
    expect(e.message).not.toContain('\n');
    expect(e.message).toContain(`${dir}/broken.c:2:`);
    expect(e.message).toMatch(/error: expected/);
    const log = /full build log: (\S+)/.exec(e.hint ?? '')?.[1];
    expect(await readFile(log!, 'utf8')).toMatch(/broken\.c:2:\d+: error:/);
  });

  it("a failure that is not the compiler's shows make's own last words", async () => {
    const dir = join(scratch, 'make-error');
    await mkdir(dir);
    await writeFile(join(dir, 'Kbuild'), '$(error domu test: this Kbuild refuses to build)\n');
    const e = await rejection(buildExternalModules(ctx, { source: dir, buildDir: headers.buildDir, release: kernel.release }));
    expect(e.message).toMatch(new RegExp(`^${dir}: out-of-tree module build failed: .*Kbuild:1: \\*\\*\\* domu test: this Kbuild refuses to build`));
  });

  it('a Kbuild that lists no module fails: no .ko was produced', async () => {
    const dir = join(scratch, 'empty');
    await mkdir(dir);
    await writeFile(join(dir, 'Kbuild'), 'obj-m :=\n');
    const e = await rejection(buildExternalModules(ctx, { source: dir, buildDir: headers.buildDir, release: kernel.release }));
    expect(e.message).toBe(`${dir}: the build produced no .ko module`);
  });

  it('a missing directory, or one without Kbuild or Makefile, is bad input', async () => {
    const missing = join(scratch, 'no-such-module');
    const e1 = await rejection(buildExternalModules(ctx, { source: missing, buildDir: headers.buildDir, release: kernel.release }));
    expect(e1).toBeInstanceOf(InputError);
    expect(e1.message).toBe(`${missing}: no such directory`);
    const bare = join(scratch, 'bare');
    await mkdir(bare);
    await writeFile(join(bare, 'hello.c'), '');
    const e2 = await rejection(buildExternalModules(ctx, { source: bare, buildDir: headers.buildDir, release: kernel.release }));
    expect(e2).toBeInstanceOf(InputError);
    expect(e2.message).toContain(`${bare} has no Kbuild or Makefile`);
  });

  it('a module built against the headers of another release fails the vermagic check, showing both', async () => {
    const e = await rejection(buildExternalModules(ctx, { source: FIXTURE, buildDir: headers.buildDir, release: OTHER_RELEASE }));
    expect(e.message).toContain(`domu_hello.ko was built for kernel ${kernel.release}, but the guest kernel is ${OTHER_RELEASE}`);
  });

  it("names the kernel's compiler when it is not installed", async () => {
    const copy = await linkBuildDir(join(scratch, 'gcc99'), ['.config']);
    const config = await readFile(join(headers.buildDir, '.config'), 'utf8');
    await writeFile(join(copy, '.config'), config.replace(/^CONFIG_CC_VERSION_TEXT=.*$/m, 'CONFIG_CC_VERSION_TEXT="gcc-99 (Debian 99.1.0-1) 99.1.0"'));
    const e = await rejection(buildExternalModules(ctx, { source: FIXTURE, buildDir: copy, release: kernel.release }));
    expect(e.message).toMatch(/built with gcc-99 .*gcc-99 is not installed/);
    expect(e.hint).toBe('apt-get install gcc-99');
  });
});
