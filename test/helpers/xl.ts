// Debian's real `xl` (xen-utils-<major>.<minor>, 4.17 in bookworm) parsing Xen domain configs
// OFFLINE, without a hypervisor.
//
// Fetch: the metapackage xen-system-amd64 names the archive's current xen-utils-<major>.<minor>
// (as linux-image-amd64 names the kernel; the metapackage itself is not downloaded). Then that
// package, the packages of the same source package (`xen`) it depends on, recursively
// (libxenmisc4.17 = libxenlight/libxenctrl/libxlutil/…, libxenstore4, libxentoollog1,
// xen-utils-common for /etc/xen/xl.conf, …), any other shared-library dependency
// that is not installed on this machine (here libyajl2), and libxen-dev (the headers of the
// same build, to compile our preload against). `apt-get download` through a private apt
// configuration + `dpkg-deb -x` into ONE entry `xl-offline/<package>_<version>` of the shared
// test cache (fetchDebsIntoCache, src/kernel/kernel.ts); nothing is installed (installing the
// package pulls udev and upgrades systemd). Memoised per process like getKernelPackage.
//
// Run: `xl` fails at context creation without Xen ("cannot init xl context"). Our LD_PRELOAD
// library test/fixtures/xl-offline/xl-offline.c (README there) answers the few hypervisor
// queries, so `xl -N create <cfg>` (dry run) parses the config with Debian's unmodified code
// and prints the resulting libxl_domain_config as JSON. It is compiled with the machine's gcc
// into the cache entry (`.xl-offline/xl-offline-<hash>.so`, hash over source, flags and gcc
// version: a changed source gives a new build).
//
// The JSON (libxl's generator) OMITS every field that has its libxl default, e.g. on_poweroff =
// "destroy", access=ro (readwrite 0), a nic without mac. Paths, for xl.cfg keys:
//   name → c_info.name            type → c_info.type ("pv", the default, or "pvh")
//   memory (MiB) → b_info.target_memkb (KiB)     maxmem (MiB) → b_info.max_memkb (KiB; = memory when absent)
//   vcpus → b_info.max_vcpus (and b_info.avail_vcpus = [0..n-1])
//   kernel / ramdisk / cmdline → b_info.kernel / b_info.ramdisk / b_info.cmdline
//     (xm's root + extra become b_info.cmdline "root=<root> <extra>")
//   disk target / vdev / format / access → disks[i].pdev_path / .vdev / .format / .readwrite (1 = rw)
//   vif mac / bridge → nics[i].mac / nics[i].bridge
//   on_poweroff / on_reboot / on_crash → on_poweroff / on_reboot / on_crash (top level; "destroy"
//     is the default and omitted; xl itself defaults on_reboot to "restart", which is shown)
import { createHash } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { candidatePackages, dependsNames, sourcePackageOf, type CandidatePackage, type PrivateApt } from '../../src/fetch/apt.js';
import { tempPathFor } from '../../src/core/atomic.js';
import { DomuError } from '../../src/core/errors.js';
import { ExecError, run, type ExecEnv } from '../../src/core/exec.js';
import { fetchDebsIntoCache, type Deb } from '../../src/kernel/kernel.js';
import { memoryLogger } from '../../src/core/log.js';
import { projectPath } from '../../src/core/paths.js';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import type { StageContext } from '../../src/core/context.js';
import { TEST_CACHE_DIR } from './busybox-tarball.js';
import { sharedStageContext } from './context.js';

/** The metapackage that depends on the current xen-utils-<major>.<minor> (not itself downloaded). */
export const XEN_META_PACKAGE = 'xen-system-amd64';
/** The versioned name of the Xen tools package, e.g. xen-utils-4.17. */
export const XEN_UTILS_RE = /^xen-utils-(\d+\.\d+)$/;
/** The headers of the same Xen build (not a dependency of xl; needed to compile the preload). */
export const XEN_DEV_PACKAGE = 'libxen-dev';
export const XL_OFFLINE_SOURCE = projectPath('test', 'fixtures', 'xl-offline', 'xl-offline.c');

const CACHE_KIND = 'xl-offline';
const MANIFEST = 'xl-offline-packages.json';

export interface FetchedDeb extends Deb {
  /** Its source package (`xen` for everything but the missing system libraries). */
  source: string;
  /** Size of the .deb in bytes (the archive's Size field). */
  size: number;
}

/** The unpacked packages in the cache entry. */
export interface XenTree {
  root: string;
  /** e.g. `<root>/usr/lib/xen-4.17/bin/xl` (the real binary; usr/sbin/xl is a wrapper script). */
  xl: string;
  /** The directory holding libxenlight.so.* and the other libraries (LD_LIBRARY_PATH). */
  libDir: string;
  /** `<root>/usr/include` (libxen-dev) */
  include: string;
  /** Debian's default global config `<root>/etc/xen/xl.conf` (comments only). */
  globalConfig: string;
  /** xen-utils-<major>.<minor> (e.g. xen-utils-4.17) and its Debian version, e.g. 4.17.7+13-g2445b30a44-0+deb12u1. */
  package: string;
  version: string;
  packages: FetchedDeb[];
}

export interface XlParseResult {
  /** xl exited 0 and printed the parsed config. */
  ok: boolean;
  /** The parsed libxl_domain_config (only when ok). */
  json?: any;
  stdout: string;
  stderr: string;
  exitCode: number;
}

export interface XlParseOptions {
  /** Global config read instead of /etc/xen/xl.conf (default: Debian's packaged xl.conf). */
  globalConfig?: string;
}

export interface XlOffline extends XenTree {
  /** Upstream Xen version of the package, e.g. 4.17.7. */
  xenVersion: string;
  /** The compiled LD_PRELOAD library. */
  preload: string;
  /** sha256 of the xl-offline.c the preload was built from. */
  preloadSourceSha256: string;
  /** The environment parse() runs xl with (without XL_OFFLINE_GLOBAL_CONFIG). */
  env: Record<string, string>;
  /** `xl -N create <cfgPath>`: exit 0 gives the JSON; a rejection gives ok false, a non-zero exit and xl's message. */
  parse(cfgPath: string, opts?: XlParseOptions): Promise<XlParseResult>;
}

/** Upstream major, minor and patch from a Debian version such as 4.17.7+13-g2445b30a44-0+deb12u1. */
export function xenVersionOf(debianVersion: string): { major: number; minor: number; patch: number | undefined; text: string } {
  const m = /^(?:\d+:)?(\d+)\.(\d+)(?:\.(\d+))?/.exec(debianVersion);
  if (!m) throw new DomuError(`cannot read a Xen version from the Debian version "${debianVersion}"`);
  const patch = m[3] === undefined ? undefined : Number(m[3]);
  return { major: Number(m[1]), minor: Number(m[2]), patch, text: m[0].replace(/^\d+:/, '') };
}

/** Which of `names` dpkg says are installed on this machine (read only). */
async function installedOf(env: ExecEnv, names: string[]): Promise<Set<string>> {
  if (!names.length) return new Set();
  // Exit 1 when some name is unknown to dpkg (it says so on stderr); the known ones are printed.
  const r = await run(env, 'dpkg-query', ['-W', '-f=${Package} ${db:Status-Abbrev}\n', ...names], { okExitCodes: [0, 1], quiet: true, missingHint: 'install dpkg' });
  return new Set(r.stdout.split('\n').filter((l) => /^\S+ ii/.test(l)).map((l) => l.split(' ')[0]!));
}

const candidates = candidatePackages;

const isLibraryPackage = (p: CandidatePackage) => p.fields.Section === 'libs' || /^lib[a-z0-9]/.test(p.package) || /^zlib/.test(p.package);

/**
 * xen-utils-<major>.<minor> + libxen-dev + their dependencies from the source package `xen` (recursively),
 * + shared-library dependencies this machine lacks. Other dependencies (udev, python3, ucf, …) are
 * not needed to run xl and are left out.
 */
async function resolveXenDebs(ctx: StageContext, apt: PrivateApt, top: CandidatePackage): Promise<FetchedDeb[]> {
  const source = sourcePackageOf(top.package, top.fields);
  const dev = (await candidates(ctx, apt, [XEN_DEV_PACKAGE]))[0];
  if (!dev) throw new DomuError(`Debian's archive has no ${XEN_DEV_PACKAGE}`);
  if (dev.version !== top.version || sourcePackageOf(dev.package, dev.fields) !== source) {
    throw new DomuError(`${XEN_DEV_PACKAGE} ${dev.version} is not from the same Xen build as ${top.package} ${top.version}`);
  }
  const depsOf = (p: CandidatePackage) => [...dependsNames(p.fields['Pre-Depends']), ...dependsNames(p.fields.Depends)];
  const chosen: CandidatePackage[] = [top, dev];
  const seen = new Set([top.package, dev.package]);
  const skipped: string[] = [];
  for (let level = [...depsOf(top), ...depsOf(dev)]; level.length; ) {
    const fresh = [...new Set(level)].filter((n) => !seen.has(n));
    fresh.forEach((n) => seen.add(n));
    const [found, installed] = await Promise.all([candidates(ctx, apt, fresh), installedOf(ctx, fresh)]);
    const take: CandidatePackage[] = [];
    for (const p of found) {
      if (sourcePackageOf(p.package, p.fields) === source) take.push(p);
      else if (!installed.has(p.package) && isLibraryPackage(p)) take.push(p);
      else if (!installed.has(p.package)) skipped.push(p.package);
    }
    chosen.push(...take);
    level = take.flatMap(depsOf);
  }
  ctx.log.info(`xl: ${chosen.map((d) => d.package).join(', ')}${skipped.length ? `; not needed to run xl: ${skipped.join(', ')}` : ''}`);
  return chosen.map((p) => ({ package: p.package, version: p.version, source: sourcePackageOf(p.package, p.fields), size: Number(p.fields.Size ?? 0) }));
}

async function findDir(base: string, test: (name: string) => boolean): Promise<string[]> {
  return (await readdir(base).catch(() => [] as string[])).filter(test).map((n) => join(base, n));
}

/** Locate xl, its libraries and the headers in an unpacked entry and check that xl's libraries all resolve. */
async function inspectTree(ctx: StageContext, dir: string, main: Deb): Promise<XenTree> {
  const { major, minor } = xenVersionOf(main.version);
  const xl = join(dir, 'usr', 'lib', `xen-${major}.${minor}`, 'bin', 'xl');
  if (!existsSync(xl)) throw new DomuError(`${main.package} ${main.version}: no ${xl}`);
  const libDirs = [];
  for (const d of await findDir(join(dir, 'usr', 'lib'), (n) => /-linux-gnu/.test(n))) {
    if ((await readdir(d)).some((n) => n.startsWith('libxenlight.so.'))) libDirs.push(d);
  }
  if (libDirs.length !== 1) throw new DomuError(`${main.package} ${main.version}: expected one usr/lib/<triplet> with libxenlight.so.*, found ${libDirs.length}`);
  const libDir = libDirs[0]!;
  const include = join(dir, 'usr', 'include');
  if (!existsSync(join(include, 'libxl.h'))) throw new DomuError(`${dir}: no usr/include/libxl.h (${XEN_DEV_PACKAGE} missing)`);
  const globalConfig = join(dir, 'etc', 'xen', 'xl.conf');
  if (!existsSync(globalConfig)) throw new DomuError(`${dir}: no etc/xen/xl.conf (xen-utils-common missing)`);
  // "not found" (a library) or "version `GLIBC_2.xx' not found": something this machine lacks.
  const ldd = await run(ctx, 'ldd', [xl], { env: { LD_LIBRARY_PATH: libDir, LD_PRELOAD: undefined }, quiet: true, okExitCodes: [0, 1] });
  const missing = `${ldd.stdout}\n${ldd.stderr}`.split('\n').filter((l) => /not found/.test(l));
  if (ldd.exitCode !== 0 || missing.length) throw new DomuError(`${xl}: unresolved libraries: ${missing.map((l) => l.trim()).join('; ') || ldd.stderr}`);
  let packages: FetchedDeb[];
  try {
    packages = JSON.parse(await readFile(join(dir, MANIFEST), 'utf8')) as FetchedDeb[];
  } catch (e) {
    throw new DomuError(`${dir}: no readable ${MANIFEST}`, { cause: e });
  }
  return { root: dir, xl, libDir, include, globalConfig, package: main.package, version: main.version, packages };
}

/** Fetch (or find in the cache) the unpacked Xen tools; see the file comment. */
export async function fetchXenTools(ctx: StageContext): Promise<XenTree> {
  let resolved: FetchedDeb[] | undefined;
  return fetchDebsIntoCache(ctx, {
    request: XEN_META_PACKAGE,
    kind: CACHE_KIND,
    label: 'xl',
    missingHint: `the archive no longer offers ${XEN_META_PACKAGE}; update XEN_META_PACKAGE in test/helpers/xl.ts`,
    resolve: async (apt, meta) => {
      const utils = dependsNames(meta.fields.Depends).find((d) => XEN_UTILS_RE.test(d));
      if (!utils) throw new DomuError(`${meta.package} ${meta.version} depends on no xen-utils-<major>.<minor> (Depends: ${meta.fields.Depends ?? 'none'})`);
      const top = (await candidates(ctx, apt, [utils]))[0];
      if (!top) throw new DomuError(`${meta.package} ${meta.version} depends on ${utils}, which Debian's archive does not offer`);
      return (resolved = await resolveXenDebs(ctx, apt, top));
    },
    fixUp: async (dir) => {
      if (!resolved) throw new Error('xl: fixUp before resolve');
      await writeFile(join(dir, MANIFEST), `${JSON.stringify(resolved, null, 2)}\n`);
    },
    inspect: (dir, main) => inspectTree(ctx, dir, main),
  });
}

/** Compile xl-offline.c against the tree's headers into `<root>/.xl-offline/` unless that build exists. */
export async function buildPreload(ctx: StageContext, tree: XenTree, sourcePath = XL_OFFLINE_SOURCE): Promise<{ path: string; sourceSha256: string }> {
  const source = await readFile(sourcePath);
  const sourceSha256 = createHash('sha256').update(source).digest('hex');
  const v = xenVersionOf(tree.version);
  const flags = [
    '-shared',
    '-fPIC',
    '-O2',
    '-Wall',
    '-Wextra',
    '-Werror',
    `-DXL_OFFLINE_XEN_MAJOR=${v.major}`,
    `-DXL_OFFLINE_XEN_MINOR=${v.minor}`,
    `-DXL_OFFLINE_XEN_EXTRA="${v.patch === undefined ? '' : `.${v.patch}`}"`,
    '-isystem',
    tree.include,
  ];
  const gcc = (await run(ctx, 'gcc', ['-dumpfullversion'], { quiet: true, missingHint: 'install gcc' })).stdout.trim();
  const key = createHash('sha256').update([sourceSha256, gcc, ...flags].join('\0')).digest('hex').slice(0, 16);
  const out = join(tree.root, '.xl-offline', `xl-offline-${key}.so`);
  if (existsSync(out)) return { path: out, sourceSha256 };
  await mkdir(dirname(out), { recursive: true });
  const tmp = tempPathFor(out);
  const release = ctx.cleanup.tempPath(tmp);
  try {
    await run(ctx, 'gcc', [...flags, '-o', tmp, sourcePath], { timeoutMs: 120_000, missingHint: 'install gcc' });
    await rename(tmp, out); // atomic; a concurrent identical build is simply replaced
  } finally {
    await rm(tmp, { force: true });
    release();
  }
  return { path: out, sourceSha256 };
}

function offline(tree: XenTree, preload: { path: string; sourceSha256: string }): XlOffline {
  const env: Record<string, string> = {
    LD_LIBRARY_PATH: tree.libDir,
    LD_PRELOAD: preload.path,
    PATH: [dirname(tree.xl), process.env.PATH ?? '/usr/bin:/bin'].join(':'),
  };
  return {
    ...tree,
    xenVersion: xenVersionOf(tree.version).text,
    preload: preload.path,
    preloadSourceSha256: preload.sourceSha256,
    env,
    async parse(cfgPath, opts = {}) {
      const execEnv: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
      let r: { exitCode: number; stdout: string; stderr: string };
      try {
        r = await run(execEnv, tree.xl, ['-N', 'create', cfgPath], {
          env: { ...env, XL_OFFLINE_GLOBAL_CONFIG: opts.globalConfig ?? tree.globalConfig },
          quiet: true,
          timeoutMs: 60_000,
        });
      } catch (e) {
        // A rejection is a non-zero exit; death by a signal means the harness lacks a fake.
        if (e instanceof ExecError && e.status > 0) return { ok: false, stdout: e.stdout, stderr: e.stderr, exitCode: e.status };
        throw e;
      }
      let json: unknown;
      try {
        json = JSON.parse(r.stdout);
      } catch {
        throw new DomuError(`xl -N create ${cfgPath} exited 0 without JSON on stdout: ${r.stdout.slice(0, 200)} ${r.stderr.slice(0, 200)}`);
      }
      return { ok: true, json, stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode };
    },
  };
}

let pending: Promise<XlOffline> | undefined;

/** Debian's xl with our preload, in the shared test cache (fetched and compiled once per machine). */
export function getXl(): Promise<XlOffline> {
  pending ??= (async () => {
    const cleanup = new CleanupRegistry();
    try {
      // One signal for every child: the downloads run at once (15 packages), over Node's default of 10 listeners.
      const signal = new AbortController().signal;
      setMaxListeners(64, signal);
      const ctx = { ...sharedStageContext(TEST_CACHE_DIR, cleanup), signal };
      const tree = await fetchXenTools(ctx);
      return offline(tree, await buildPreload(ctx, tree));
    } finally {
      await cleanup.runAll();
    }
  })();
  pending.catch(() => {
    pending = undefined;
  });
  return pending;
}
