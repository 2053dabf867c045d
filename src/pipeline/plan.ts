// The plan: a validated description plus flags compiled into the stages to run.
// Everything that can be checked without running anything is checked here (exit 2).
import type { ExtractOutput } from '../stages/extract.js';
import { extractStage } from '../stages/extract.js';
import { expectedSha256, sourceStage, type SourceInput, type SourceOutput } from '../stages/source.js';
import type { PipelineStage } from './run.js';
import type { Description } from './schema.js';

export interface PlanFlags {
  strictVersion?: boolean;
  source?: string | undefined;
  sha256?: string | undefined;
  pureJs?: boolean;
  noCache?: boolean;
}

/** Results shared between the stages of one run, filled as they complete. */
export interface PlanState {
  source?: SourceOutput;
  extract?: ExtractOutput;
}

export interface Plan {
  command: string;
  description: Description;
  stages: PipelineStage[];
  state: PlanState;
  /** Stages of the designed pipeline that this version does not have yet. */
  notYetAvailable: string[];
}

export const LATER_STAGES = ['kconfig', 'compile', 'kernel', 'modules', 'initramfs', 'rootfs', 'image', 'xen configs', 'publish'];

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

export function planFetch(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  return { command: 'fetch', description, state, stages: [sourceTask(description, flags, state)], notYetAvailable: [] };
}

export function planBuild(description: Description, flags: PlanFlags): Plan {
  const state: PlanState = {};
  return {
    command: 'build',
    description,
    state,
    stages: [sourceTask(description, flags, state), extractTask(flags, state)],
    notYetAvailable: LATER_STAGES,
  };
}
