// The kconfig stage: `make defconfig`, merge our fragment symbol by symbol, `yes '' | make
// oldconfig`, then verify that every symbol we asked for survived. Probe-based adjustments
// (compat header, musl kernel headers, CONFIG_TC) are merged the same way and reported.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { copyTree } from '../fs/buildtree.js';
import { InputError } from '../core/errors.js';
import { runFedBy, run } from '../core/exec.js';
import { hashValue, sha256 } from '../core/hash.js';
import {
  emptyConfig,
  get,
  mergeFragment,
  parseConfig,
  serializeConfig,
  set,
  type KConfig,
} from '../busybox/kconfig.js';
import { scanKconfigDeps } from '../busybox/kconfig-sources.js';
import { formatMismatches, verifyFragment } from '../busybox/kconfig-verify.js';
import { glibcAtLeast, muslKernelHeaders, probeToolchain, probeToolchainMemo, type Toolchain, type ToolchainSpec } from '../busybox/toolchain.js';
import type { StageContext } from '../core/context.js';
import { verifiedTree } from './extract.js';

/** Bump when what this stage produces for the same inputs changes. */
export const KCONFIG_STAGE_VERSION = 2;
export const KCONFIG_KIND = 'kconfig';

export interface KconfigInput {
  tree: string;
  version: string;
  tarballSha256: string;
  /** The fragment merged into defconfig, or a full .config used instead (already parsed at plan time). */
  source: { mode: 'fragment' | 'config'; path: string; config: KConfig };
  toolchain: ToolchainSpec;
  /** Absolute path of busybox-config/compat/stime.h. */
  compatHeader: string;
  noCache?: boolean;
}

export interface Adjustment {
  symbol: string;
  value: string;
  why: string;
}

export interface KconfigOutput {
  /** The final .config text. */
  config: string;
  configSha256: string;
  adjustments: Adjustment[];
  toolchain: Toolchain;
  /** make variables every make call of this build uses. */
  makeVars: string[];
  /** Hash of the files force-included through CONFIG_EXTRA_CFLAGS (part of the compile key). */
  includedFilesHash: string;
  /** The build directory prepared with this .config (on a cache miss only). */
  buildDir: string | undefined;
  cacheHit: boolean;
  key: string;
  symbolsVerified: number;
}

// Paths written into CONFIG_EXTRA_CFLAGS are split on spaces by busybox's Makefile and end up
// in compiler command lines: allow only characters that need no quoting anywhere.
const SAFE_PATH = /^\/[A-Za-z0-9_./+-]+$/;

function safePath(path: string, what: string): string {
  if (!SAFE_PATH.test(path)) {
    throw new InputError(`${what} ${JSON.stringify(path)} contains characters that busybox's build cannot take in CONFIG_EXTRA_CFLAGS`, 'use a directory path of letters, digits and _ . / + - only (move the project or pass --cache-dir)');
  }
  return path;
}

// kconfig writes the current date into the .config header unless told not to; the final .config
// is part of the compile cache key, so the same configuration must give the same text.
const KCONFIG_ENV = { KCONFIG_NOTIMESTAMP: '1' };

const bool = (value: 'y' | 'n') => ({ kind: 'bool' as const, value });
const str = (value: string) => ({ kind: 'string' as const, value });

export async function kconfigStage(input: KconfigInput, ctx: StageContext): Promise<KconfigOutput> {
  const muslHeaders = input.toolchain.libc === 'musl' && !input.toolchain.crossCompile ? safePath(await muslKernelHeaders(ctx.cache.root), 'the musl kernel header directory') : undefined;
  const extra = muslHeaders ? ['-idirafter', muslHeaders] : [];
  const toolchain = input.noCache ? await probeToolchain(ctx, input.toolchain, extra) : await probeToolchainMemo(ctx, ctx.cache.root, input.toolchain, extra);

  // Adjustments from probes, merged over the user's fragment/config.
  const adjustments: Adjustment[] = [];
  const extraCflags: string[] = [];
  let included = '';
  if (muslHeaders) {
    extraCflags.push('-idirafter', muslHeaders);
    adjustments.push({ symbol: 'EXTRA_CFLAGS', value: `-idirafter ${muslHeaders}`, why: 'musl-gcc hides the kernel headers; these symlinks bring back linux/, asm/, asm-generic/, mtd/' });
  }
  if (glibcAtLeast(toolchain, 2, 31)) {
    const header = safePath(input.compatHeader, 'the compat header');
    extraCflags.push('-include', header);
    included = await readFile(header, 'utf8');
    adjustments.push({ symbol: 'EXTRA_CFLAGS', value: `-include ${header}`, why: `glibc ${toolchain.glibc!.major}.${toolchain.glibc!.minor} has no stime() (removed in 2.31); busybox before 1.32 calls it` });
  }
  const wanted = mergeFragment(emptyConfig(input.source.path), input.source.config);
  if (extraCflags.length) {
    const own = get(wanted, 'EXTRA_CFLAGS');
    const mine = own?.kind === 'string' && own.value ? `${own.value} ` : '';
    set(wanted, 'EXTRA_CFLAGS', str(`${mine}${extraCflags.join(' ')}`));
  }
  if (!toolchain.hasTcaCbqMax && get(wanted, 'TC')?.kind !== 'bool') {
    set(wanted, 'TC', bool('n'));
    adjustments.push({ symbol: 'TC', value: 'n', why: 'the kernel headers lack TCA_CBQ_MAX (Linux >= 6.8); tc in busybox <= 1.36 needs it' });
  }
  const makeVars = makeVariables(toolchain);
  const wantedText = serializeConfig(wanted);
  const key = hashValue({ stage: KCONFIG_STAGE_VERSION, tarball: input.tarballSha256, mode: input.source.mode, wanted: wantedText, makeVars, libc: toolchain.libc, cross: toolchain.crossCompile ?? null });
  const includedFilesHash = sha256(included);
  const out = (config: string, buildDir: string | undefined, cacheHit: boolean): KconfigOutput => ({
    config,
    configSha256: sha256(config),
    adjustments,
    toolchain,
    makeVars,
    includedFilesHash,
    buildDir,
    cacheHit,
    key,
    symbolsVerified: wanted.values.size,
  });
  for (const a of adjustments) ctx.log.info(`adjustment: CONFIG_${a.symbol}=${a.value} (${a.why})`);

  if (!input.noCache) {
    const hit = await ctx.cache.lookup(KCONFIG_KIND, key, { log: ctx.log, redo: 'configuring again' });
    if (hit) {
      ctx.log.info('final .config from the cache; make not run');
      return out(await readFile(join(hit, 'config'), 'utf8'), undefined, true);
    }
  }

  const buildDir = join(ctx.workDir, `busybox-${input.version}`);
  await copyTree(ctx, await verifiedTree(ctx, input.tree), buildDir);
  try {
    const dotConfig = join(buildDir, '.config');
    let base = emptyConfig('.config');
    if (input.source.mode === 'fragment') {
      await run(ctx, 'make', [...makeVars, 'defconfig'], { cwd: buildDir, env: KCONFIG_ENV, quiet: true, missingHint: 'apt-get install make' });
      base = parseConfig(await readFile(dotConfig, 'utf8'), `${buildDir}/.config`);
    }
    await writeFile(dotConfig, serializeConfig(mergeFragment(base, wanted)));
    // busybox 1.22.1's kconfig has no olddefconfig: answer every new question with its default.
    await runFedBy(ctx, ['yes', ['']], 'make', [...makeVars, 'oldconfig'], { cwd: buildDir, env: KCONFIG_ENV, quiet: true });
    const finalText = await readFile(dotConfig, 'utf8');
    const final = parseConfig(finalText, `${buildDir}/.config`);
    const mismatches = verifyFragment(final, wanted);
    if (mismatches.length) {
      const explained = verifyFragment(final, wanted, await scanKconfigDeps(buildDir));
      // A full .config from another release may name symbols this release does not have.
      const fatal = input.source.mode === 'config' ? explained.filter((m) => m.cause !== 'no-such-symbol') : explained;
      for (const m of explained.filter((x) => !fatal.includes(x))) ctx.log.warn(`CONFIG_${m.symbol} from ${input.source.path}: ${m.reason}; ignored`);
      if (fatal.length) {
        throw new InputError(
          `busybox ${input.version}: ${fatal.length} symbol${fatal.length > 1 ? 's' : ''} of ${input.source.path} did not survive oldconfig\n${formatMismatches(fatal)}`,
          'turn the dependency on in the fragment as well, or drop the symbol',
        );
      }
    }
    ctx.log.info(`verified ${wanted.values.size} symbols in the final .config`);
    await ctx.cache.store(KCONFIG_KIND, key, async (tmp) => {
      await writeFile(join(tmp, 'config'), finalText);
      await writeFile(join(tmp, 'adjustments.json'), JSON.stringify(adjustments, null, 2));
    }, (tmp) => ctx.cleanup.tempPath(tmp), { log: ctx.log, redo: 'replacing it' });
    return out(finalText, buildDir, false);
  } catch (e) {
    await rm(buildDir, { recursive: true, force: true });
    throw e;
  }
}

/** make variables for the toolchain (every make call of a build passes the same ones). */
export function makeVariables(t: Toolchain): string[] {
  const vars: string[] = [];
  if (t.crossCompile) vars.push(`CROSS_COMPILE=${t.crossCompile}`, `ARCH=${t.arch}`);
  if (t.libc === 'musl' && !t.crossCompile) {
    vars.push('CC=musl-gcc');
    // Old releases redefine struct ethhdr in ifplugd under musl; including netinet/if_ether.h
    // first lets the kernel header skip its copy (facts.md). Harmless on newer releases.
    vars.push('CFLAGS_ifplugd.o=-include netinet/if_ether.h');
  }
  return vars;
}
