// Pipeline tasks of the busybox build: source, extract, kconfig, compile (each wraps its stage).
import { count } from '../../core/plural.js';
import { existsSync } from 'node:fs';
import { readTextLimited, TooLargeError } from '../../core/textfile.js';
import { isAbsolute, resolve } from 'node:path';
import { errorMessage, InputError } from '../../core/errors.js';
import { parseConfig, parseFragment, type KConfig } from '../../busybox/kconfig.js';
import { projectPath } from '../../core/paths.js';
import { crossTarget } from '../../busybox/toolchain.js';
import { compileStage } from '../../stages/compile.js';
import { extractStage } from '../../stages/extract.js';
import { kconfigStage, type KconfigInput } from '../../stages/kconfig.js';
import { expectedSha256, sourceStage, type SourceInput } from '../../stages/source.js';
import type { PipelineStage } from '../run.js';
import { DEFAULTS, type Description } from '../../model/schema.js';
import type { PlanFlags, PlanState } from '../plan-types.js';

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

export function kconfigSource(desc: Description, flags: PlanFlags): KconfigInput['source'] {
  const mode = desc.busybox.config ? 'config' : 'fragment';
  const key = mode === 'config' ? 'busybox.config' : 'busybox.fragment';
  const path = resolveDataPath(desc.busybox.config ?? desc.busybox.fragment, flags.baseDir, mode === 'config' ? undefined : DEFAULTS.busybox.fragment);
  let text: string;
  try {
    // A .config is ~30 KB; past 1 MiB (e.g. /dev/zero) it is not one, and must not hang the run.
    text = readTextLimited(path, 1 << 20);
  } catch (e) {
    const why = e instanceof TooLargeError ? 'larger than 1 MiB (or never ends), which no kconfig file is' : (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : errorMessage(e);
    throw new InputError(`${key}: cannot read ${path}: ${why}`, 'fix the path in the build description (relative paths start at its directory)');
  }
  const config: KConfig = mode === 'config' ? parseAsInput(() => parseConfig(text, path)) : parseFragment(text, path);
  return { mode, path, config };
}

export function parseAsInput(fn: () => KConfig): KConfig {
  try {
    return fn();
  } catch (e) {
    throw new InputError(errorMessage(e));
  }
}

export function sourceTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
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

export function extractTask(flags: PlanFlags, state: PlanState): PipelineStage {
  return {
    name: 'extract',
    title: 'Extract the source tree',
    run: async (ctx) => {
      const src = state.source!;
      const origin = { label: src.origin, userGiven: src.provider === 'local' || src.provider === 'url' };
      const x = await extractStage({ tarball: src.tarball, sha256: src.sha256, pureJs: flags.pureJs ?? false, noCache: flags.noCache ?? false, origin }, ctx);
      state.extract = x;
      return { cacheHit: x.cacheHit, note: x.tree, outputs: { ...x } };
    },
  };
}

export function kconfigTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
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
        note: `${count(k.symbolsVerified, 'symbol')} verified${k.adjustments.length ? `, ${count(k.adjustments.length, 'adjustment')}` : ''}`,
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

export function compileTask(flags: PlanFlags, state: PlanState): PipelineStage {
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
