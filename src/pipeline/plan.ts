// The plan: a validated description plus flags compiled into the stages to run.
// Everything that can be checked without running anything is checked here (exit 2).
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { errorMessage, InputError } from '../lib/errors.js';
import { parseConfig, parseFragment, type KConfig } from '../lib/kconfig.js';
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
import type { PipelineStage } from './run.js';
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
}

/** Results shared between the stages of one run, filled as they complete. */
export interface PlanState {
  source?: SourceOutput;
  extract?: ExtractOutput;
  kconfig?: KconfigOutput;
  compile?: CompileOutput;
  rootfs?: RootfsOutput;
  image?: ImageOutput;
}

export interface Plan {
  command: string;
  description: Description;
  stages: PipelineStage[];
  state: PlanState;
  /** Stages of the designed pipeline that this version does not have yet. */
  notYetAvailable: string[];
}

export const LATER_STAGES = ['kernel', 'modules', 'initramfs', 'xen configs', 'publish'];
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
      const r = await rootfsStage({ installTree: state.compile!.installTree, skel, deviceTable, guest: desc.guest }, ctx);
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
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      return { cacheHit: false, note: `${mib(img.apparentBytes)} apparent, ${mib(img.allocatedBytes)} allocated (${img.populate})`, outputs: { ...img, sourceDateEpoch } };
    },
  };
}

export function planFetch(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  return { command: 'fetch', description, state, stages: [sourceTask(description, flags, state)], notYetAvailable: [] };
}

export const BUILD_STAGES = ['source', 'extract', 'kconfig', 'compile', 'rootfs', 'image'] as const;

export function planBuild(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  const last = flags.until === undefined ? BUILD_STAGES.length - 1 : BUILD_STAGES.indexOf(flags.until as (typeof BUILD_STAGES)[number]);
  if (last < 0) throw new InputError(`--until ${flags.until}: no such stage`, `use one of ${BUILD_STAGES.join(', ')}`);
  // Only the stages that will run are planned (and checked): --until compile needs no skel.
  const builders = [
    () => sourceTask(description, flags, state),
    () => extractTask(flags, state),
    () => kconfigTask(description, flags, state),
    () => compileTask(flags, state),
    () => rootfsTask(description, flags, state),
    () => imageTask(description, flags, state),
  ];
  return {
    command: 'build',
    description,
    state,
    stages: builders.slice(0, last + 1).map((b) => b()),
    notYetAvailable: flags.until === undefined ? LATER_STAGES : [],
  };
}

