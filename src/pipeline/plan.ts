// The plan: a validated description plus flags compiled into the stages to run.
// Everything that can be checked without running anything is checked here (exit 2).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir, rename, rm } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { tempPathFor } from '../lib/atomic.js';
import { errorMessage, InputError } from '../lib/errors.js';
import { get, isOn, parseConfig, parseFragment, type KConfig } from '../lib/kconfig.js';
import { fetchKernelHeaders } from '../lib/kbuild.js';
import type { ModuleCompression } from '../lib/modinfo.js';
import { projectPath } from '../lib/paths.js';
import { crossTarget } from '../lib/toolchain.js';
import { compileStage, type CompileOutput } from '../stages/compile.js';
import { imageStage, type ImageOutput } from '../stages/image.js';
import { rootfsStage, type RootfsOutput } from '../stages/rootfs.js';
import { newestMtime } from '../lib/epoch.js';
import { parseDeviceTable } from '../lib/devtable.js';
import { extractStage, type ExtractOutput } from '../stages/extract.js';
import { kconfigStage, type KconfigInput, type KconfigOutput } from '../stages/kconfig.js';
import { expectedSha256, sourceStage, type SourceInput, type SourceOutput } from '../stages/source.js';
import { initramfsStage, type InitramfsOutput } from '../stages/initramfs.js';
import { renderConfigs, writeConfigs, type BootFiles, type XenConfigsOutput } from '../stages/xenconfigs.js';
import { checkStore, publish, type PublishOutput } from '../lib/publish.js';
import { kernelStage, localBuildDir, type KernelOutput } from '../stages/kernel.js';
import { modulesStage, resolveModules, type ModulesOutput, type ModuleSet } from '../stages/modules.js';
import type { PipelineStage } from './run.js';
import type { StageContext } from './context.js';
import { DEFAULTS, type Description } from './schema.js';

export interface PlanFlags {
  strictVersion?: boolean;
  source?: string | undefined;
  sha256?: string | undefined;
  pureJs?: boolean;
  noCache?: boolean;
  jobs?: number | undefined;
  /** --out: where the store-shaped tree is written. */
  outDir?: string | undefined;
  /** --source-date-epoch or $SOURCE_DATE_EPOCH; default: the newest mtime in the busybox tarball. */
  sourceDateEpoch?: number | undefined;
  /** --until: stop after this stage. */
  until?: string | undefined;
  /** Directory of the description file: relative paths in it are resolved from there. */
  baseDir?: string | undefined;
  /** --force-vermagic: copy modules whose vermagic names another kernel release (warning). */
  forceVermagic?: boolean;
  /** --allow-inconsistent: hosts that disagree on kernel/ramdisk/disk/bridge are a warning. */
  allowInconsistent?: boolean;
  /** --publish and its options: copy the --out tree into store.path. */
  publish?: { allowUnmounted: boolean; force: boolean; lockTimeoutMs: number; store?: string | undefined } | undefined;
}

/** Results shared between the stages of one run, filled as they complete. */
export interface PlanState {
  source?: SourceOutput;
  extract?: ExtractOutput;
  kconfig?: KconfigOutput;
  compile?: CompileOutput;
  kernel?: KernelOutput;
  modules?: ModulesOutput;
  /** `domu modules`: the closure without a guest layout. */
  moduleSet?: ModuleSet;
  rootfs?: RootfsOutput;
  initramfs?: InitramfsOutput;
  image?: ImageOutput;
  /** Kernel and ramdisk as placed in --out (after the image succeeded). */
  boot?: { kernel: string; ramdisk?: string | undefined };
  configs?: XenConfigsOutput;
  published?: PublishOutput & { store: string };
}

export interface Plan {
  command: string;
  description: Description;
  stages: PipelineStage[];
  state: PlanState;
  /** Stages of the designed pipeline that this version does not have yet. */
  notYetAvailable: string[];
}

export const LATER_STAGES: string[] = [];

/** What the generated ramdisk loads to mount the root: Xen's block front end and ext4 (its
 * softdep brings crc32c), and virtio for local boot checks under QEMU. */
export const RAMDISK_MODULES = ['xen-blkfront', 'ext4', 'virtio_blk', 'virtio_pci'];
export const COMPAT_HEADER = projectPath('busybox-config', 'compat', 'stime.h');

export function sourceInput(desc: Description, flags: PlanFlags): SourceInput {
  const input: SourceInput = {
    version: desc.busybox.version,
    sha256: flags.sha256,
    source: flags.source,
    mirrors: desc.busybox.mirrors,
    fallback: desc.busybox.fallback,
    strictVersion: flags.strictVersion ?? false,
    noCache: flags.noCache ?? false,
  };
  // Plan-time check: the version must have a pinned or given hash.
  expectedSha256(input.version, input.sha256);
  return input;
}

/**
 * A path from the description: relative to the description's directory; a default value that
 * is not there refers to the project's own data (busybox-config/ ships with domu).
 */
export function resolveDataPath(value: string, baseDir: string | undefined, defaultValue: string | undefined): string {
  if (isAbsolute(value)) return value;
  const mine = resolve(baseDir ?? process.cwd(), value);
  if (value === defaultValue && !existsSync(mine)) return projectPath(value);
  return mine;
}

function kconfigSource(desc: Description, flags: PlanFlags): KconfigInput['source'] {
  const mode = desc.busybox.config ? 'config' : 'fragment';
  const key = mode === 'config' ? 'busybox.config' : 'busybox.fragment';
  const path = resolveDataPath(desc.busybox.config ?? desc.busybox.fragment, flags.baseDir, mode === 'config' ? undefined : DEFAULTS.busybox.fragment);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new InputError(`${key}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : errorMessage(e)}`, 'fix the path in the build description (relative paths start at its directory)');
  }
  const config: KConfig = mode === 'config' ? parseAsInput(() => parseConfig(text, path)) : parseFragment(text, path);
  return { mode, path, config };
}

function parseAsInput(fn: () => KConfig): KConfig {
  try {
    return fn();
  } catch (e) {
    throw new InputError(errorMessage(e));
  }
}

function sourceTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const input = sourceInput(desc, flags);
  return {
    name: 'source',
    title: `Fetch busybox ${desc.busybox.version}`,
    run: async (ctx) => {
      const s = await sourceStage(input, ctx);
      state.source = s;
      return {
        cacheHit: s.cacheHit,
        note: `busybox ${s.resolvedVersion} from ${s.provider}${s.substitution ? ` (substituted for ${s.requestedVersion})` : ''}`,
        outputs: {
          path: s.tarball,
          sha256: s.sha256,
          requestedVersion: s.requestedVersion,
          resolvedVersion: s.resolvedVersion,
          provider: s.provider,
          origin: s.origin,
          substitution: s.substitution ?? null,
          attempts: s.attempts,
        },
      };
    },
  };
}

function extractTask(flags: PlanFlags, state: PlanState): PipelineStage {
  return {
    name: 'extract',
    title: 'Extract the source tree',
    run: async (ctx) => {
      const src = state.source!;
      const x = await extractStage({ tarball: src.tarball, sha256: src.sha256, pureJs: flags.pureJs ?? false, noCache: flags.noCache ?? false }, ctx);
      state.extract = x;
      return { cacheHit: x.cacheHit, note: x.tree, outputs: { ...x } };
    },
  };
}

function kconfigTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const source = kconfigSource(desc, flags);
  if (desc.busybox.cross_compile) {
    if (desc.busybox.libc === 'musl') {
      throw new InputError('busybox.libc: musl with busybox.cross_compile is not supported', 'use glibc for cross builds (the cross toolchain links statically against its own glibc)');
    }
    crossTarget(desc.busybox.cross_compile); // an unknown CPU is bad input: exit 2 before any stage
  }
  return {
    name: 'kconfig',
    title: 'Configure busybox',
    run: async (ctx) => {
      const k = await kconfigStage(
        {
          tree: state.extract!.tree,
          version: state.source!.resolvedVersion,
          tarballSha256: state.source!.sha256,
          source,
          toolchain: { libc: desc.busybox.libc, crossCompile: desc.busybox.cross_compile },
          compatHeader: COMPAT_HEADER,
          noCache: flags.noCache ?? false,
        },
        ctx,
      );
      state.kconfig = k;
      return {
        cacheHit: k.cacheHit,
        note: `${k.symbolsVerified} symbols verified${k.adjustments.length ? `, ${k.adjustments.length} adjustments` : ''}`,
        outputs: {
          configSha256: k.configSha256,
          source: source.path,
          adjustments: k.adjustments,
          compiler: k.toolchain.ccVersion,
          libc: k.toolchain.libc,
          glibc: k.toolchain.glibc ? `${k.toolchain.glibc.major}.${k.toolchain.glibc.minor}` : null,
          makeVars: k.makeVars,
          symbolsVerified: k.symbolsVerified,
        },
      };
    },
  };
}

function compileTask(flags: PlanFlags, state: PlanState): PipelineStage {
  return {
    name: 'compile',
    title: 'Compile busybox',
    run: async (ctx) => {
      const k = state.kconfig!;
      const c = await compileStage(
        {
          tree: state.extract!.tree,
          version: state.source!.resolvedVersion,
          tarballSha256: state.source!.sha256,
          config: k.config,
          buildDir: k.buildDir,
          toolchain: k.toolchain,
          makeVars: k.makeVars,
          includedFilesHash: k.includedFilesHash,
          jobs: flags.jobs,
          noCache: flags.noCache ?? false,
        },
        ctx,
      );
      state.compile = c;
      return {
        cacheHit: c.cacheHit,
        note: `${c.applets ?? '?'} applets, static ${c.machine}`,
        outputs: { ...c },
      };
    },
  };
}

function rootfsTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const skel = resolveDataPath(desc.image.skel, flags.baseDir, DEFAULTS.image.skel);
  if (!existsSync(skel)) throw new InputError(`image.skel: no such directory ${skel}`, 'fix the path in the build description (relative paths start at its directory)');
  // The device table lives beside the skel: <skel>/../rootfs-devices.txt for the default layout.
  const deviceTable = resolve(skel, '..', 'rootfs-devices.txt');
  let tableText: string;
  try {
    tableText = readFileSync(deviceTable, 'utf8');
  } catch {
    throw new InputError(`the device table ${deviceTable} (beside image.skel) cannot be read`, 'copy rootfs-devices.txt from domu-builder next to your skel directory');
  }
  parseDeviceTable(tableText, deviceTable); // plan-time: a bad line is exit 2 before any stage
  return {
    name: 'rootfs',
    title: 'Assemble the root file system',
    run: async (ctx) => {
      const m = state.modules;
      const r = await rootfsStage(
        { installTree: state.compile!.installTree, skel, deviceTable, guest: desc.guest, ...(m ? { modules: { files: m.files, etcModules: m.etcModules } } : {}) },
        ctx,
      );
      state.rootfs = r;
      return { cacheHit: false, note: `${r.files} files, ${r.symlinks} links, ${r.devices.length} device nodes`, outputs: { ...r } };
    },
  };
}

function imageTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const output = resolve(flags.outDir ?? 'out', desc.image.file);
  return {
    name: 'image',
    title: `Build the ext4 image ${desc.image.file}`,
    run: async (ctx) => {
      const r = state.rootfs!;
      const sourceDateEpoch = flags.sourceDateEpoch ?? (await newestMtime(state.extract!.tree));
      await mkdir(dirname(output), { recursive: true });
      const img = await imageStage(
        { staging: r.staging, devices: r.devices, output, size: desc.image.size, label: desc.guest.name, populate: desc.image.populate, sourceDateEpoch, contentHash: r.contentHash },
        ctx,
      );
      state.image = img;
      await rm(r.staging, { recursive: true, force: true }); // its content is in the image now
      if (desc.kernel.ship) state.boot = await placeBoot(desc, flags, state);
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      return { cacheHit: false, note: `${mib(img.apparentBytes)} apparent, ${mib(img.allocatedBytes)} allocated (${img.populate})`, outputs: { ...img, sourceDateEpoch, boot: state.boot ?? null } };
    },
  };
}

function kernelTask(desc: Description, state: PlanState, imageOptional = false): PipelineStage {
  if (desc.busybox.cross_compile && desc.kernel.image === 'auto' && desc.kernel.modules === 'auto') {
    // auto means this host's kernel or Debian's amd64 package: modules and a ramdisk for another
    // architecture than the cross-built busybox.
    throw new InputError(
      `busybox.cross_compile is ${desc.busybox.cross_compile}, but kernel.image and kernel.modules are auto (this host's architecture)`,
      'set kernel.image or kernel.modules to a kernel for the guest\'s architecture, or stop with --until compile',
    );
  }
  return {
    name: 'kernel',
    title: 'Resolve the guest kernel',
    run: async (ctx) => {
      const k = await kernelStage({ image: desc.kernel.image, modules: desc.kernel.modules, package: desc.kernel.package, imageOptional }, ctx);
      state.kernel = k;
      return { cacheHit: false, note: `${k.release} (${k.origin}${k.package ? ` ${k.package} ${k.version}` : ''})`, outputs: { ...k } };
    },
  };
}

/** Out-of-tree module sources of the description, resolved and checked at plan time. */
function moduleSources(desc: Description, flags: PlanFlags): string[] {
  return desc.modules.flatMap((m, i) => {
    if (typeof m === 'string') return [];
    const dir = resolve(flags.baseDir ?? process.cwd(), m.source);
    let ok = false;
    try {
      ok = statSync(dir).isDirectory();
    } catch {
      ok = false;
    }
    if (!ok) throw new InputError(`modules.${i}.source: no such directory ${dir}`, 'give the directory of an out-of-tree module (with a Kbuild or Makefile); relative paths start at the description\'s directory');
    return [dir];
  });
}

const moduleNames = (desc: Description): string[] => desc.modules.filter((m): m is string => typeof m === 'string');

/** Compressions the guest's busybox reads (FEATURE_SEAMLESS_*): such modules stay compressed. */
function guestLoads(configText: string): Set<ModuleCompression> {
  const k = parseConfig(configText, '.config');
  const out = new Set<ModuleCompression>();
  if (isOn(get(k, 'FEATURE_SEAMLESS_GZ'))) out.add('gzip');
  if (isOn(get(k, 'FEATURE_SEAMLESS_XZ'))) out.add('xz');
  return out;
}

/** The kernel build directory for out-of-tree modules: the kernel's own, else Debian's headers. */
async function headersFor(k: KernelOutput, ctx: StageContext): Promise<string> {
  const local = k.origin === 'package' ? undefined : await localBuildDir(k);
  return local ?? (await fetchKernelHeaders(ctx, { release: k.release })).buildDir;
}

function modulesTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const sources = moduleSources(desc, flags);
  const requests = moduleNames(desc);
  return {
    name: 'modules',
    title: 'Resolve and check kernel modules',
    run: async (ctx) => {
      const k = state.kernel!;
      const buildDir = sources.length ? await headersFor(k, ctx) : undefined;
      const m = await modulesStage(
        { release: k.release, modulesDir: k.modulesDir, requests, sources, buildDir, forceVermagic: flags.forceVermagic ?? false, guestLoads: guestLoads(state.kconfig!.config), jobs: flags.jobs },
        ctx,
      );
      state.modules = m;
      const kib = (n: number) => `${Math.round(n / 1024)} KiB`;
      return {
        cacheHit: false,
        note: `${m.loadOrder.length} modules (${kib(m.bytes)}): ${m.loadOrder.join(' ') || 'none'}`,
        outputs: { release: m.release, loadOrder: m.loadOrder, modules: m.modules, builtin: m.builtin, warnings: m.warnings, indexSource: m.indexSource, bytes: m.bytes },
      };
    },
  };
}

function initramfsTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  return {
    name: 'initramfs',
    title: 'Generate the guest ramdisk',
    run: async (ctx) => {
      const k = state.kernel!;
      const set = await resolveModules({ release: k.release, modulesDir: k.modulesDir, requests: RAMDISK_MODULES, forceVermagic: flags.forceVermagic ?? false }, ctx);
      const sourceDateEpoch = flags.sourceDateEpoch ?? (await newestMtime(state.extract!.tree));
      const r = await initramfsStage(
        {
          busybox: join(state.compile!.installTree, 'bin', 'busybox'),
          release: k.release,
          modules: set.closure.modules.map((m) => ({ name: m.name, file: m.file, path: m.path })),
          output: join(ctx.workDir, 'initramfs', `initrd-${k.release}.gz`),
          sourceDateEpoch,
        },
        ctx,
      );
      state.initramfs = r;
      return { cacheHit: false, note: `${(r.size / 1048576).toFixed(1)} MiB, ${r.modules.length} modules`, outputs: { ...r } };
    },
  };
}

/** Put `src` at `dest` atomically (copy to a temp name beside it, then rename). */
async function placeFile(src: string, dest: string, move: boolean): Promise<void> {
  await mkdir(dirname(dest), { recursive: true });
  const tmp = tempPathFor(dest);
  try {
    if (move) await rename(src, tmp).catch(() => copyFile(src, tmp));
    else await copyFile(src, tmp);
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * The guest kernel and ramdisk into `<out>/boot/`, after the image succeeded, so that a failed
 * build never leaves a new kernel beside an old image.
 */
async function placeBoot(desc: Description, flags: PlanFlags, state: PlanState): Promise<PlanState['boot']> {
  const k = state.kernel;
  if (!k) return undefined;
  const boot = resolve(flags.outDir ?? 'out', 'boot');
  const names = bootNames(desc, k.release);
  const kernel = join(boot, names.kernel!);
  await placeFile(k.image!, kernel, false); // the build's kernel stage always has an image
  let ramdisk: string | undefined;
  if (state.initramfs) {
    ramdisk = join(boot, names.ramdisk!);
    await placeFile(state.initramfs.path, ramdisk, true);
  } else if (names.ramdisk) {
    ramdisk = join(boot, names.ramdisk);
    await placeFile(resolve(flags.baseDir ?? process.cwd(), desc.kernel.ramdisk), ramdisk, false);
  }
  return { kernel, ramdisk };
}

/** The names of kernel and ramdisk in the store's boot/ (the same in --out and in every config). */
export function bootNames(desc: Description, release: string): BootFiles {
  const r = desc.kernel.ramdisk;
  return {
    kernel: `vmlinuz-${release}`,
    ramdisk: r === 'none' ? undefined : `initrd-${release}-${desc.guest.name}.${r === 'generate' ? 'gz' : 'img'}`,
  };
}

/**
 * The xen configs stage: rendered once at plan time with a placeholder release, so that a bad
 * inventory (unsafe values, hosts that disagree) is exit 2 before anything runs; rendered for
 * real and written into --out when the stage runs (after the image, in a build).
 */
function xenConfigsTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  renderConfigs(desc, bootNames(desc, '0.0.0-plan'), { allowInconsistent: flags.allowInconsistent ?? false });
  const out = resolve(flags.outDir ?? 'out');
  return {
    name: 'xen configs',
    title: `Render the Xen configs for ${desc.hosts.length} host${desc.hosts.length === 1 ? '' : 's'}`,
    run: async (ctx) => {
      const boot = state.kernel ? bootNames(desc, state.kernel.release) : {};
      const result = renderConfigs(desc, boot, { allowInconsistent: flags.allowInconsistent ?? false });
      const c = await writeConfigs(result, out, ctx);
      state.configs = c;
      return { cacheHit: false, note: `${c.files.length} files (${c.written} written, ${c.unchanged} unchanged)`, outputs: { ...c } };
    },
  };
}

/** `domu configs`: the kernel's release (for boot/ names, when shipped), then the configs. */
export function planConfigs(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  checkRamdisk(description, flags);
  const stages = [
    ...(flags.publish ? [storeCheckTask(description, flags)] : []),
    ...(description.kernel.ship ? [kernelTask(description, state, true)] : []),
    xenConfigsTask(description, flags, state),
  ];
  if (flags.publish) stages.push(publishTask(description, flags, state, 'configs'));
  return { command: 'configs', description, state, stages, notYetAvailable: [] };
}

/** With --publish, the store is checked first, so a build does not run only to find it unusable. */
function storeCheckTask(desc: Description, flags: PlanFlags): PipelineStage {
  const store = resolve(flags.publish!.store ?? desc.store.path);
  return {
    name: 'store',
    title: `Check the store ${store}`,
    run: async () => {
      const real = await checkStore(store, flags.publish!.allowUnmounted);
      return { cacheHit: false, note: real, outputs: { store: real } };
    },
  };
}

/**
 * --publish: the --out tree into the store (lib/publish.ts: lock, hand-edit check, temp + fsync
 * + rename, the previous image kept as .prev). A build publishes the image, boot/ and the
 * configs; `domu configs` the configs only, and warns when they name boot files the store lacks.
 */
function publishTask(desc: Description, flags: PlanFlags, state: PlanState, what: 'build' | 'configs'): PipelineStage {
  const opts = flags.publish!;
  const store = resolve(opts.store ?? desc.store.path);
  const out = resolve(flags.outDir ?? 'out');
  return {
    name: 'publish',
    title: `Publish to ${store}`,
    run: async (ctx) => {
      const files = [...(state.configs?.files ?? [])];
      let image: string | undefined;
      if (what === 'build') {
        image = desc.image.file;
        const boot = state.boot;
        for (const p of [boot?.kernel, boot?.ramdisk]) if (p) files.unshift(relative(out, p));
      } else {
        for (const f of [state.kernel && bootNames(desc, state.kernel.release)].flatMap((b) => (b && desc.kernel.ship ? [b.kernel, b.ramdisk] : []))) {
          if (f && !existsSync(join(store, 'boot', f))) ctx.log.warn(`the configs name boot/${f}, which ${store} does not have yet: publish a build (domu build --publish) before starting the guest`);
        }
      }
      const r = await publish({ outDir: out, store, files, image, force: opts.force, allowUnmounted: opts.allowUnmounted, lockTimeoutMs: opts.lockTimeoutMs, command: `domu ${what}` }, ctx);
      state.published = { ...r, store };
      return { cacheHit: false, note: `${r.written.length} written, ${r.unchanged.length} unchanged${r.backups.length ? `, ${r.backups.length} .bak kept` : ''}`, outputs: { store, ...r } };
    },
  };
}

export function planFetch(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  return { command: 'fetch', description, state, stages: [sourceTask(description, flags, state)], notYetAvailable: [] };
}

export const BUILD_STAGES = ['source', 'extract', 'kconfig', 'compile', 'kernel', 'modules', 'rootfs', 'initramfs', 'image', 'xen configs'] as const;

/** `domu modules`: the kernel, then the closure and checks of `names` (default: the description's). */
export function planModules(description: Description, flags: PlanFlags, names: readonly string[]): Plan {
  const state: PlanState = {};
  const requests = names.length ? [...names] : moduleNames(description);
  const sources = names.length ? [] : moduleSources(description, flags);
  for (const n of requests) if (!/^[A-Za-z0-9_:.*?[\]-]+$/.test(n)) throw new InputError(`module name ${JSON.stringify(n)}: expected a module name or alias like xen-netfront`);
  if (!requests.length && !sources.length) throw new InputError('no module names: give NAME arguments or a modules: list in the build description');
  const resolveTask: PipelineStage = {
    name: 'modules',
    title: `Resolve ${[...requests, ...sources].join(', ')}`,
    run: async (ctx) => {
      const k = state.kernel!;
      const input = { release: k.release, modulesDir: k.modulesDir, requests, forceVermagic: flags.forceVermagic ?? false };
      // Out-of-tree modules of the description have to be compiled before they can be checked.
      const set = sources.length ? (await modulesStage({ ...input, sources, buildDir: await headersFor(k, ctx), jobs: flags.jobs }, ctx)).set : await resolveModules(input, ctx);
      state.moduleSet = set;
      return { cacheHit: set.index.source === 'cached', note: `${set.closure.modules.length} modules: ${set.closure.modules.map((m) => m.name).join(' ')}`, outputs: {} };
    },
  };
  return { command: 'modules', description, state, stages: [kernelTask(description, state, true), resolveTask], notYetAvailable: [] };
}

/** kernel.ramdisk given as a path must be a readable file (plan time: exit 2 before any stage). */
function checkRamdisk(desc: Description, flags: PlanFlags): void {
  const r = desc.kernel.ramdisk;
  if (r === 'generate' || r === 'none') return;
  let ok = false;
  try {
    ok = statSync(resolve(flags.baseDir ?? process.cwd(), r)).isFile();
  } catch {
    ok = false;
  }
  if (!ok) throw new InputError(`kernel.ramdisk: no such file ${r}`, 'give the path of a ramdisk, or generate (the default), or none');
}

export function planBuild(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  const last = flags.until === undefined ? BUILD_STAGES.length - 1 : BUILD_STAGES.indexOf(flags.until as (typeof BUILD_STAGES)[number]);
  if (last < 0) throw new InputError(`--until ${flags.until}: no such stage`, `use one of ${BUILD_STAGES.join(', ')}`);
  // Only the stages that will run are planned (and checked): --until compile needs no skel.
  checkRamdisk(description, flags);
  const ramdisk = description.kernel.ramdisk === 'generate';
  const builders: Record<(typeof BUILD_STAGES)[number], (() => PipelineStage) | undefined> = {
    source: () => sourceTask(description, flags, state),
    extract: () => extractTask(flags, state),
    kconfig: () => kconfigTask(description, flags, state),
    compile: () => compileTask(flags, state),
    kernel: () => kernelTask(description, state),
    modules: () => modulesTask(description, flags, state),
    rootfs: () => rootfsTask(description, flags, state),
    initramfs: ramdisk ? () => initramfsTask(description, flags, state) : undefined,
    image: () => imageTask(description, flags, state),
    'xen configs': () => xenConfigsTask(description, flags, state),
  };
  if (flags.publish && flags.until !== undefined) throw new InputError('--publish with --until: only a complete build can be published', 'drop --until');
  return {
    command: 'build',
    description,
    state,
    stages: [
      ...(flags.publish ? [storeCheckTask(description, flags)] : []),
      ...BUILD_STAGES.slice(0, last + 1).flatMap((n) => {
        const b = builders[n];
        return b ? [b()] : [];
      }),
      ...(flags.publish ? [publishTask(description, flags, state, 'build')] : []),
    ],
    notYetAvailable: flags.until === undefined ? LATER_STAGES : [],
  };
}

