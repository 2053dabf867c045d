// Out-of-tree kernel modules, built with kbuild against the guest kernel's own headers.
//
// Headers: Debian's linux-headers-<release> is only the arch part of the tree; it symlinks
// into linux-headers-<abi>-common and linux-kbuild-<ver> (scripts, prebuilt fixdep/modpost/
// objtool). All of them are unpacked into ONE cache entry (fetchDebsIntoCache, kernel.ts) so the
// relative links resolve, and the tree is made relocatable (see makeRelocatable).
//
// Build: the user's directory is copied into a scratch directory under ctx.workDir (never
// written to), then `make -C <buildDir> M=<scratch> modules`. The scratch directory is kept: the
// returned .ko files live there (the work directory outlives the run).
import { createWriteStream, existsSync } from 'node:fs';
import { access, constants, cp, lstat, mkdir, mkdtemp, readdir, readFile, readlink, realpath, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { basename, dirname, join, relative, resolve } from 'node:path';
import type { StageContext } from '../core/context.js';
import { candidatePackage, dependsNames, sourcePackageOf, type CandidatePackage } from '../fetch/apt.js';
import { DomuError, InputError } from '../core/errors.js';
import { ExecError, run, which } from '../core/exec.js';
import { fetchDebsIntoCache, settleAll, type Deb } from './kernel.js';
import { readModinfo, type ModuleInfo } from './modinfo.js';

export interface KernelHeaders {
  /** The cache entry holding every unpacked package. */
  root: string;
  /** `<root>/usr/src/linux-headers-<release>`: the directory for `make -C`. */
  buildDir: string;
  release: string;
  /** linux-headers-<release> and its Debian version. */
  package: string;
  version: string;
}

export interface FetchHeadersOptions {
  /** The guest kernel's release, e.g. 6.1.0-41-amd64. */
  release: string;
  /** The system apt configuration to derive the Debian entries from (default /etc/apt). */
  aptEtc?: string;
}

/**
 * Fetch `linux-headers-<release>` and the packages it needs from the same source package into
 * the cache `kernel-headers/` (nothing installed; memo as for the kernel image), checked usable.
 */
export async function fetchKernelHeaders(ctx: StageContext, opts: FetchHeadersOptions): Promise<KernelHeaders> {
  const { release } = opts;
  if (!/^\d+\.\d+[A-Za-z0-9.+~_-]*$/.test(release)) throw new DomuError(`bad kernel release "${release}"`);
  const want = `linux-headers-${release}`;
  return fetchDebsIntoCache(ctx, {
    request: want,
    kind: 'kernel-headers',
    label: 'headers',
    aptEtc: opts.aptEtc,
    missingHint: 'out-of-tree modules need the headers of the guest kernel; use a kernel that is still in the archive',
    resolve: async (apt, top) => {
      const source = sourcePackageOf(want, top.fields);
      // The tree is split over packages of the same source (…-common, linux-kbuild-…); the
      // other dependencies (gcc-12, libc6, libelf1) are tools of the build host, not the tree.
      // Breadth first, each level's look-ups at once: an apt-cache call costs ~0.5 s.
      const depsOf = (p: CandidatePackage) => [...dependsNames(p.fields['Pre-Depends']), ...dependsNames(p.fields.Depends)];
      const debs: Deb[] = [top];
      const seen = new Set([want]);
      for (let level = depsOf(top); level.length; ) {
        const fresh = [...new Set(level)].filter((n) => !seen.has(n));
        fresh.forEach((n) => seen.add(n));
        const found = await settleAll(fresh.map((n) => candidatePackage(ctx, apt, n))); // undefined: a virtual package
        const same = found.filter((p): p is CandidatePackage => p !== undefined && sourcePackageOf(p.package, p.fields) === source);
        debs.push(...same);
        level = same.flatMap(depsOf);
      }
      ctx.log.info(`headers: ${debs.map((d) => d.package).join(', ')}`);
      return debs;
    },
    fixUp: (dir) => makeRelocatable(dir),
    inspect: async (dir, main) => {
      const buildDir = join(dir, 'usr', 'src', want);
      await checkKernelBuildDir(buildDir, release);
      return { root: dir, buildDir, release, package: main.package, version: main.version };
    },
  });
}

/**
 * Debian's linux-headers-<release>/Makefile is `include /usr/src/linux-headers-<abi>-common/Makefile`,
 * an absolute path that exists only when the package is installed, and lib/modules/<release>/build
 * links to /usr/src absolutely. Point both into this entry (the include through the Makefile's own
 * location), so the tree works wherever the cache lives and never reaches into the host's /usr/src.
 */
async function makeRelocatable(root: string): Promise<void> {
  for (const name of await readdir(join(root, 'usr', 'src')).catch(() => [] as string[])) {
    const makefile = join(root, 'usr', 'src', name, 'Makefile');
    if (!existsSync(makefile)) continue;
    const text = await readFile(makefile, 'utf8');
    const fixed = text.replace(/^(-?include)[ \t]+(\/\S+)[ \t]*$/gm, (line, verb: string, target: string) =>
      existsSync(join(root, target)) ? `${verb} $(dir $(realpath $(lastword $(MAKEFILE_LIST))))${relative(dirname(makefile), join(root, target))}` : line,
    );
    if (fixed !== text) await writeFile(makefile, fixed);
  }
  for (const e of await readdir(root, { recursive: true, withFileTypes: true })) {
    if (!e.isSymbolicLink()) continue;
    const link = join(e.parentPath, e.name);
    const target = await readlink(link);
    if (!target.startsWith('/')) continue;
    await unlink(link);
    const inside = join(root, target);
    // A link to something the packages do not hold would reach into the host: drop it.
    if (await lstat(inside).then(() => true, () => false)) await symlink(relative(dirname(link), inside), link);
  }
}

/**
 * The kernel release a build tree compiles modules for: UTS_RELEASE, which vermagic is made of.
 * (Debian's include/config/kernel.release holds the upstream version, e.g. 6.1.192, because
 * Debian sets KERNELRELEASE in .kernelvariables; it is only the fallback.)
 */
async function buildDirRelease(buildDir: string): Promise<string | undefined> {
  const uts = await readFile(join(buildDir, 'include', 'generated', 'utsrelease.h'), 'utf8').catch(() => '');
  const m = /^#define\s+UTS_RELEASE\s+"([^"]+)"/m.exec(uts);
  if (m) return m[1];
  const text = await readFile(join(buildDir, 'include', 'config', 'kernel.release'), 'utf8').catch(() => '');
  return text.trim() || undefined;
}

/**
 * Check that `buildDir` can build modules (Makefile, config, Module.symvers, a runnable fixdep)
 * and, when `release` is given, that it is that kernel's tree. Returns the tree's release.
 */
export async function checkKernelBuildDir(buildDir: string, release?: string): Promise<string> {
  const has = (p: string, mode = constants.R_OK) => access(join(buildDir, p), mode).then(() => true, () => false);
  const missing: string[] = [];
  if (!(await has('Makefile'))) missing.push('Makefile');
  if (!(await has('.config')) && !(await has('include/config/auto.conf'))) missing.push('.config');
  if (!(await has('Module.symvers'))) missing.push('Module.symvers');
  if (!(await has('scripts/basic/fixdep', constants.X_OK))) missing.push('executable scripts/basic/fixdep');
  if (missing.length) {
    throw new DomuError(`${buildDir} is not a usable kernel build directory: no ${missing.join(', ')}`, {
      hint: 'use the linux-headers package of the guest kernel, or a kernel tree after `make modules_prepare`',
    });
  }
  const actual = await buildDirRelease(buildDir);
  if (!actual) throw new DomuError(`${buildDir}: no include/generated/utsrelease.h or include/config/kernel.release: cannot tell which kernel it is for`);
  if (release !== undefined && actual !== release) {
    throw new DomuError(`${buildDir} is the build directory of kernel ${actual}, not ${release}`, { hint: `use linux-headers-${release}` });
  }
  return actual;
}

/** `CONFIG_NAME` of the tree's .config (or include/config/auto.conf), quotes removed. */
async function configValue(buildDir: string, name: string): Promise<string | undefined> {
  const text = (await readFile(join(buildDir, '.config'), 'utf8').catch(() => undefined)) ?? (await readFile(join(buildDir, 'include', 'config', 'auto.conf'), 'utf8').catch(() => ''));
  const m = new RegExp(`^${name}=(.*)$`, 'm').exec(text);
  return m?.[1]?.replace(/^"(.*)"$/, '$1');
}

/**
 * The gcc the kernel was built with (CONFIG_CC_VERSION_TEXT "gcc-12 (Debian 12.2.0-14) 12.2.0"
 * → gcc-12), which must be installed: modules are compiled with the kernel's compiler (Debian's
 * .kernelvariables names it too). undefined for a kernel not built with gcc.
 */
async function kernelCompiler(buildDir: string): Promise<string | undefined> {
  const text = await configValue(buildDir, 'CONFIG_CC_VERSION_TEXT');
  const program = text?.split(/\s+/)[0];
  if ((await configValue(buildDir, 'CONFIG_CC_IS_GCC')) !== 'y' || !program || !/gcc/.test(program)) return undefined;
  if (!(await which(program))) {
    const pkg = /(gcc-\d+)$/.exec(program)?.[1] ?? 'gcc';
    throw new DomuError(`the guest kernel was built with ${text}, and ${program} is not installed: out-of-tree modules must be compiled with it`, { hint: `apt-get install ${pkg}` });
  }
  return program;
}

export interface BuildModulesOptions {
  /** The user's module source directory (with a Kbuild or Makefile); only read. */
  source: string;
  /** The kernel build directory (KernelHeaders.buildDir). */
  buildDir: string;
  /** The guest kernel's release: every module's vermagic must name it. */
  release: string;
  jobs?: number | undefined;
}

export interface BuiltModule {
  /** The module name (`name=` of .modinfo). */
  name: string;
  /** The .ko in the scratch directory. */
  file: string;
  info: ModuleInfo;
}

// What kbuild leaves in a module directory: never copied, so every .ko found after the build
// was built by it (a stale .ko from the user's own builds could carry another vermagic).
const BUILD_PRODUCT = /^(?:\..+\.cmd|.+\.(?:o|ko|mod|mod\.c)|modules\.order|Module\.symvers|\.tmp_versions|\.git)$/;

// make inherits our environment: variables of an enclosing make (MAKEFLAGS naming a jobserver
// we do not share) or a developer's cross-build settings would change what kbuild does.
const MAKE_ENV: Record<string, string | undefined> = {
  // English, ASCII compiler messages for the error lines below. kbuild unexports LC_ALL, so
  // what gcc sees is LANG and LC_MESSAGES/LC_CTYPE; LANGUAGE would override the C locale.
  LC_ALL: 'C',
  LANG: 'C',
  LC_MESSAGES: 'C',
  LC_CTYPE: 'C',
  LANGUAGE: undefined,
  ...Object.fromEntries(['MAKEFLAGS', 'MFLAGS', 'MAKELEVEL', 'MAKEOVERRIDES', 'ARCH', 'CROSS_COMPILE', 'KBUILD_OUTPUT', 'KCFLAGS', 'KCPPFLAGS', 'KBUILD_EXTRA_SYMBOLS'].map((v) => [v, undefined])),
};

const ERROR_LINE = /(?:^|\s)(?:fatal )?error:|^ERROR: |undefined!|No rule to make target/;

/** Build the out-of-tree modules of `source` against `buildDir`; see the file comment. */
export async function buildExternalModules(ctx: StageContext, opts: BuildModulesOptions): Promise<BuiltModule[]> {
  const source = await checkSource(opts.source);
  await checkKernelBuildDir(opts.buildDir);
  const buildDir = await realpath(opts.buildDir);
  const cc = await kernelCompiler(buildDir);
  const scratch = await copySource(ctx, source);
  await runKbuild(ctx, { ...scratch, source, buildDir, cc, release: opts.release, jobs: opts.jobs ?? availableParallelism() });
  const built = await collectModules(ctx, source, scratch, opts.release);
  ctx.log.info(`kbuild: ${source}: ${built.map((b) => b.name).join(', ')} (vermagic ${opts.release})`);
  return built;
}

/** The absolute source directory, which must look like a kbuild module directory. */
async function checkSource(dir: string): Promise<string> {
  const source = resolve(dir);
  const st = await stat(source).catch(() => undefined);
  if (!st?.isDirectory()) throw new InputError(`${source}: ${st ? 'not a directory' : 'no such directory'}`, 'an out-of-tree module source must be a directory with a Kbuild or Makefile');
  if (!existsSync(join(source, 'Kbuild')) && !existsSync(join(source, 'Makefile'))) {
    throw new InputError(`${source} has no Kbuild or Makefile: not an out-of-tree module source directory`, 'add a Kbuild file such as `obj-m := mymodule.o`');
  }
  return source;
}

interface Scratch {
  /** A fresh directory under ctx.workDir/kbuild. */
  dir: string;
  /** The copy of the source (M=). */
  src: string;
  /** The source directory's name, as the modules' debug info will show it (/usr/src/<name>). */
  name: string;
  log: string;
}

async function copySource(ctx: StageContext, source: string): Promise<Scratch> {
  if (`${resolve(ctx.workDir)}/`.startsWith(`${source}/`)) throw new InputError(`${source} contains the work directory ${ctx.workDir}: it cannot be copied into it`, 'use an --out directory outside the module source');
  const name = basename(source).replace(/[^A-Za-z0-9._-]/g, '_') || 'module';
  await mkdir(join(ctx.workDir, 'kbuild'), { recursive: true });
  const dir = await realpath(await mkdtemp(join(ctx.workDir, 'kbuild', `${name}-`)));
  if (/\s/.test(dir)) throw new DomuError(`kbuild cannot build in a path with white space: ${dir}`, { hint: 'use an --out directory without spaces' });
  const src = join(dir, 'src');
  await cp(source, src, { recursive: true, dereference: true, filter: (p) => p === source || !BUILD_PRODUCT.test(basename(p)) });
  return { dir, src, name, log: join(dir, 'build.log') };
}

interface KbuildRun extends Scratch {
  source: string;
  buildDir: string;
  cc: string | undefined;
  release: string;
  jobs: number;
}

/** `make -C <buildDir> M=<src> modules`; a failure names the source with its first error lines. */
async function runKbuild(ctx: StageContext, r: KbuildRun): Promise<void> {
  if (/\s/.test(r.buildDir)) throw new DomuError(`kbuild cannot build in a path with white space: ${r.buildDir}`, { hint: 'use a --cache-dir without spaces' });
  // Reproducible modules: the debug info would carry this run's scratch and cache paths; map
  // them to where an installed system has them (the headers entry's root is its `/`).
  const entryRoot = /^(.+)\/usr\/src\/[^/]+$/.exec(r.buildDir)?.[1];
  const kcflags = [`-ffile-prefix-map=${r.src}=/usr/src/${r.name}`, entryRoot ? `-ffile-prefix-map=${entryRoot}/=/` : `-ffile-prefix-map=${r.buildDir}=/usr/src/linux-headers-${r.release}`];
  const log = createWriteStream(r.log);
  const errors: string[] = [];
  const lastStderr: string[] = []; // when no line looks like an error (e.g. a missing tool)
  let compiled = 0;
  ctx.log.info(`kbuild: ${r.source} against ${r.buildDir} (make -j${r.jobs}${r.cc ? `, ${r.cc}` : ''})`);
  try {
    await run(ctx, 'make', ['-C', r.buildDir, `M=${r.src}`, `-j${r.jobs}`, ...(r.cc ? [`CC=${r.cc}`] : []), `KCFLAGS=${kcflags.join(' ')}`, 'modules'], {
      env: MAKE_ENV,
      buffer: false,
      timeoutMs: 3600_000,
      missingHint: 'apt-get install make',
      onLine: (line, stream) => {
        log.write(`${line}\n`);
        if (/^\s+CC \[M\]/.test(line)) ctx.progress(`${++compiled} objects compiled`);
        const shown = line.trim().split(`${r.src}/`).join(`${r.source}/`);
        if (errors.length < 3 && ERROR_LINE.test(line)) errors.push(shown);
        if (stream === 'stderr' && shown && !/^make(\[\d+\])?: /.test(shown) && lastStderr.push(shown) > 3) lastStderr.shift();
      },
    });
  } catch (e) {
    if (!(e instanceof ExecError)) throw e;
    const first = (errors.length ? errors : lastStderr).join(' | ') || e.message;
    throw new DomuError(`${r.source}: out-of-tree module build failed: ${first}`, { hint: `full build log: ${r.log}`, cause: e });
  } finally {
    await new Promise<void>((res) => log.end(res));
  }
}

/** Every .ko the build produced, read, each checked to be for `release`. */
async function collectModules(ctx: StageContext, source: string, scratch: Scratch, release: string): Promise<BuiltModule[]> {
  const files = (await readdir(scratch.src, { recursive: true, withFileTypes: true }))
    .filter((e) => e.isFile() && e.name.endsWith('.ko'))
    .map((e) => join(e.parentPath, e.name))
    .sort();
  if (!files.length) throw new DomuError(`${source}: the build produced no .ko module`, { hint: `list the module in obj-m of its Kbuild or Makefile (obj-m := name.o); build log: ${scratch.log}` });
  const built: BuiltModule[] = [];
  for (const file of files) {
    const info = await readModinfo(file, ctx);
    if (info.release !== release) {
      throw new DomuError(`${source}: ${basename(file)} was built for kernel ${info.release || '(no vermagic)'}, but the guest kernel is ${release}`, {
        hint: `build against the headers of the guest kernel (linux-headers-${release})`,
      });
    }
    built.push({ name: info.name, file, info });
  }
  return built;
}
