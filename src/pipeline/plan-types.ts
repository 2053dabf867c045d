// The plan's shapes: the flags, the results shared between the stages of one run, the plan.
import type { CompileOutput } from '../stages/compile.js';
import type { ExtractOutput } from '../stages/extract.js';
import type { ImageOutput } from '../stages/image.js';
import type { InitramfsOutput } from '../stages/initramfs.js';
import type { KconfigOutput } from '../stages/kconfig.js';
import type { KernelOutput } from '../stages/kernel.js';
import type { ModulesOutput, ModuleSet } from '../stages/modules.js';
import type { RootfsOutput } from '../stages/rootfs.js';
import type { SourceOutput } from '../stages/source.js';
import type { XenConfigsOutput } from '../stages/xenconfigs.js';
import type { PublishOutput } from '../store/publish.js';
import type { PipelineStage, PreflightCheck } from './run.js';
import type { Description } from '../model/schema.js';
import type { BuildRecord } from '../model/buildrecord.js';

/** The stages of `domu build`, in order (`--until` names one). */
export const BUILD_STAGES = ['source', 'extract', 'kconfig', 'compile', 'kernel', 'modules', 'rootfs', 'initramfs', 'image', 'xen configs'] as const;

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
  /** The cache directory when it is a plain path (read at plan time for kept results only). */
  cacheDir?: string | undefined;
  /** --publish and its options: copy the --out tree into store.path. */
  publish?: { allowUnmounted: boolean; force: boolean; lockTimeoutMs: number; store?: string | undefined; /** --lun-device (store.disk lun): instead of the by-path name. */ lunDevice?: string | undefined } | undefined;
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
  /** SOURCE_DATE_EPOCH of this build (flag, environment, or the busybox tarball's newest mtime). */
  sourceDateEpoch?: number;
  /** out/build.json of the previous build, when there is one. */
  previous?: BuildRecord | undefined;
  imageKey?: string;
  ramdiskKey?: string;
  /** The image in --out is already what these inputs give: rootfs and image were skipped. */
  imageUpToDate?: boolean;
  ramdiskUpToDate?: boolean;
  record?: BuildRecord;
  /** The whole build changed nothing in --out (set by the record step). */
  upToDate?: boolean;
  published?: PublishOutput & { store: string };
}

export interface Plan {
  command: string;
  description: Description;
  stages: PipelineStage[];
  state: PlanState;
  /**
   * The output directory this run writes or reads as a whole: the run holds its lock
   * (`out/.domu.lock`) from start to end, so two runs on one --out take turns.
   * `create`: the run makes the directory when missing (runs that only read it skip the lock then).
   */
  lockOut?: { dir: string; create: boolean };
  /** Checks that need --out itself, run before any stage once its lock is held (exit 2 when they fail). */
  preflight?: PreflightCheck[];
}
