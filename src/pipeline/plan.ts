// The plan: a validated description plus flags compiled into the stages to run.
// Everything that can be checked without running anything is checked here (exit 2): each task
// builder (src/pipeline/tasks/) checks its inputs when it is called, before any stage runs.
import { count } from '../core/plural.js';
import { InputError } from '../core/errors.js';
import { modulesStage, resolveModules } from '../stages/modules.js';
import { BUILD_STAGES, type Plan, type PlanFlags, type PlanState } from './plan-types.js';
import type { PipelineStage } from './run.js';
import type { Description } from '../model/schema.js';
import { compileTask, extractTask, kconfigTask, sourceTask } from './tasks/busybox.js';
import { imageFitsCheck, imageTask, rootfsTask } from './tasks/image.js';
import { checkRamdisk, headersFor, initramfsTask, kernelTask, moduleNames, moduleSources, modulesTask } from './tasks/kernel.js';
import { publishTask, storeCheckTask, xenConfigsTask } from './tasks/store.js';
import { recordTask } from './tasks/record.js';

export { BUILD_STAGES, type Plan, type PlanFlags, type PlanState } from './plan-types.js';
export { COMPAT_HEADER, resolveDataPath, sourceInput } from './tasks/busybox.js';
export { bootNames } from './tasks/image.js';
export { RAMDISK_MODULES } from './tasks/kernel.js';

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
  return { command: 'configs', description, state, stages, ...outLock(flags, true) };
}

export function planFetch(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  return { command: 'fetch', description, state, stages: [sourceTask(description, flags, state)] };
}


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
      return { cacheHit: set.index.source === 'cached', note: `${count(set.closure.modules.length, 'module')}: ${set.closure.modules.map((m) => m.name).join(' ')}`, outputs: {} };
    },
  };
  return { command: 'modules', description, state, stages: [kernelTask(description, state, true), resolveTask] };
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
      ...(flags.publish ? [storeCheckTask(description, flags, description.image.size)] : []),
      ...BUILD_STAGES.slice(0, last + 1).flatMap((n) => {
        const b = builders[n];
        return b ? [b()] : [];
      }),
      ...(last === BUILD_STAGES.length - 1 ? [recordTask(description, flags, state)] : []),
      ...(flags.publish ? [publishTask(description, flags, state, 'build')] : []),
    ],
    ...outLock(flags, true),
    // An image.size that --out's file system cannot hold as a file: refused before any stage.
    ...(last >= BUILD_STAGES.indexOf('image') ? { preflight: [imageFitsCheck(description, flags)] } : {}),
  };
}

/** The --out lock of a plan (see Plan.lockOut). */
export function outLock(flags: PlanFlags, create: boolean): Pick<Plan, 'lockOut'> {
  return flags.outDir === undefined ? {} : { lockOut: { dir: flags.outDir, create } };
}
