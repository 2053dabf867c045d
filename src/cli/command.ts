// What a pipeline command runs once its flags are parsed: read the description, compile the plan,
// run it and print the summary. Loaded by main.ts only when such a command runs, so that
// `domu --version` and `--help` do not load the pipeline, its stages and their libraries.
import { dirname, resolve } from 'node:path';
import { existsSync, statSync } from 'node:fs';
import { asDomuError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { flagOverride, loadDescription, parseSetFlag, type Override } from '../model/description.js';
import { defaultCacheDir } from '../core/cache.js';
import type { Plan, PlanFlags } from '../pipeline/plan-types.js';
import { Run, type OutputMode } from '../pipeline/run.js';
import type { Description } from '../model/schema.js';
import { parseEpoch } from '../core/epoch.js';
import { buildSummary, formatSummary } from './summary.js';
import { formatBuildTty } from './summary-tty.js';
import { printError } from './print-error.js';

export interface CommonOpts {
  config?: string;
  out: string;
  json?: boolean;
  verbose?: boolean;
  jobs?: string;
  cache: boolean;
  cacheDir?: string;
  set?: string[];
  busyboxVersion?: string;
  libc?: string;
  strictVersion?: boolean;
  source?: string;
  sha256?: string;
  pureJs?: boolean;
  populate?: string;
  sourceDateEpoch?: string;
  until?: string;
  forceVermagic?: boolean;
  kernel?: string;
  allowInconsistent?: boolean;
  publish?: boolean;
  allowUnmounted?: boolean;
  force?: boolean;
  lockTimeout?: string;
  store?: string;
  lunDevice?: string;
  timeout?: string;
  quick?: boolean;
  dist?: string;
}

/** Compiles the description and flags of one command into its plan. */
export type PlanFn = (d: Description, f: PlanFlags, args: string[], o: CommonOpts) => Plan;

function overridesFrom(o: CommonOpts): Override[] {
  const out: Override[] = [];
  if (o.busyboxVersion !== undefined) out.push(flagOverride('--busybox-version', ['busybox', 'version'], o.busyboxVersion));
  if (o.libc !== undefined) out.push(flagOverride('--libc', ['busybox', 'libc'], o.libc));
  if (o.populate !== undefined) out.push(flagOverride('--populate', ['image', 'populate'], o.populate));
  for (const s of o.set ?? []) out.push(parseSetFlag(s));
  if (o.kernel !== undefined) out.push(kernelOverride(o.kernel));
  return out;
}

/** --kernel: a bzImage (kernel.image), a modules directory (kernel.modules) or a Debian package. */
function kernelOverride(value: string): Override {
  let st;
  try {
    st = statSync(value);
  } catch {
    st = undefined;
  }
  if (st?.isDirectory()) return flagOverride('--kernel', ['kernel', 'modules'], resolve(value));
  if (st?.isFile()) return flagOverride('--kernel', ['kernel', 'image'], resolve(value));
  if (value.includes('/')) throw new InputError(`--kernel ${value}: no such file or directory`, 'give a kernel image, a /lib/modules/<release> directory or a Debian package name');
  return flagOverride('--kernel', ['kernel', 'package'], value);
}

function descriptionFile(o: CommonOpts): string | undefined {
  if (o.config !== undefined) return o.config;
  return existsSync('guest.yaml') ? 'guest.yaml' : undefined;
}

function loadFrom(o: CommonOpts): Description {
  const file = descriptionFile(o);
  return loadDescription({ ...(file === undefined ? {} : { file }), overrides: overridesFrom(o) });
}

function flagsFrom(o: CommonOpts): PlanFlags {
  if (o.jobs !== undefined && !/^[1-9]\d*$/.test(o.jobs)) throw new InputError(`--jobs ${o.jobs}: expected a positive whole number`);
  const file = descriptionFile(o);
  return {
    strictVersion: o.strictVersion ?? false,
    source: o.source,
    sha256: o.sha256?.toLowerCase(),
    pureJs: o.pureJs ?? false,
    noCache: !o.cache,
    jobs: o.jobs === undefined ? undefined : Number(o.jobs),
    outDir: resolve(o.out),
    until: o.until,
    sourceDateEpoch: epochFrom(o),
    baseDir: file === undefined ? undefined : dirname(resolve(file)),
    forceVermagic: o.forceVermagic ?? false,
    allowInconsistent: o.allowInconsistent ?? false,
    publish: publishFrom(o),
    cacheDir: plainCacheDir(o),
  };
}

/** The cache directory for kept results at plan time: only a plain one (cacheDirOf refuses the rest later). */
function plainCacheDir(o: CommonOpts): string | undefined {
  try {
    const dir = resolve(o.cacheDir ?? defaultCacheDir());
    return PLAIN_PATH.test(dir) ? dir : undefined;
  } catch {
    return undefined; // reported where the run needs it (cacheDirOf)
  }
}

function publishFrom(o: CommonOpts): PlanFlags['publish'] {
  const needs = (['store', 'lunDevice', 'allowUnmounted', 'force', 'lockTimeout'] as const).filter((k) => o[k] !== undefined);
  if (!o.publish) {
    if (needs.length) throw new InputError(`--${needs[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} only applies with --publish`);
    return undefined;
  }
  if (o.lockTimeout !== undefined && !/^\d+(\.\d+)?$/.test(o.lockTimeout)) throw new InputError(`--lock-timeout ${o.lockTimeout}: expected a number of seconds`);
  return { allowUnmounted: o.allowUnmounted ?? false, force: o.force ?? false, lockTimeoutMs: Math.round(Number(o.lockTimeout ?? 600) * 1000), store: o.store === undefined ? undefined : resolve(o.store), lunDevice: o.lunDevice === undefined ? undefined : resolve(o.lunDevice) };
}

function epochFrom(o: CommonOpts): number | undefined {
  if (o.sourceDateEpoch !== undefined) return parseEpoch(o.sourceDateEpoch, '--source-date-epoch');
  const env = process.env.SOURCE_DATE_EPOCH;
  return env ? parseEpoch(env, 'SOURCE_DATE_EPOCH') : undefined;
}

function outputMode(o: CommonOpts): OutputMode {
  if (o.json) return 'json';
  return process.stdout.isTTY ? 'tty' : 'plain';
}

/**
 * The cache directory. Paths below it reach make's command line (CONFIG_PREFIX=…, the build
 * directory), where make expands `$(…)` even in a value: only plain path characters are taken.
 */
const PLAIN_PATH = /^[A-Za-z0-9._+,@%=:~\/-]+$/;

function cacheDirOf(o: CommonOpts): string {
  const dir = resolve(o.cacheDir ?? defaultCacheDir());
  if (!PLAIN_PATH.test(dir)) {
    const from = o.cacheDir !== undefined ? '--cache-dir' : 'the cache directory ($XDG_CACHE_HOME or ~/.cache)';
    throw new InputError(`${from} ${JSON.stringify(dir)} has characters that make would expand or split (only letters, digits and . _ + , @ % = : ~ / - are taken)`, 'pass --cache-dir with a plain path');
  }
  return dir;
}

/** Run a plan through the pipeline with signal handling; returns the exit code. */
async function runPlan(plan: Plan, o: CommonOpts): Promise<number> {
  const mode = outputMode(o);
  const run = new Run({ mode, cacheDir: cacheDirOf(o), verbose: o.verbose ?? false, command: plan.command, lockOut: plan.lockOut, preflight: plan.preflight });
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      process.stderr.write(`domu: ${sig} again; exiting without waiting for cleanup\n`);
      process.exit(sig === 'SIGINT' ? 130 : 143);
    }
    process.stderr.write(`domu: ${sig}: stopping and cleaning up…\n`);
    run.abort(sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const records = await run.execute(plan.stages);
    const summary = buildSummary(plan, records, run.runLog.warnings, { log: run.logFile });
    const text = mode === 'json' ? JSON.stringify(summary, null, 2) : mode === 'tty' && summary.artifacts ? formatBuildTty(summary) : formatSummary(summary);
    process.stdout.write(`${text}\n`);
    return 0;
  } catch (error) {
    const e = asDomuError(error);
    const code = printError(e, false, plan.command);
    if (mode === 'json') {
      const summary = buildSummary(plan, run.records, run.runLog.warnings, {
        ok: false,
        exitCode: code,
        error: { message: errorMessage(e), hint: e instanceof DomuError ? e.hint : undefined },
        log: run.logFile,
      });
      process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
    } else {
      process.stderr.write(`log: ${run.logFile}\n`);
    }
    return code;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await run.close();
  }
}

/** Plan and run one pipeline command; returns its exit code. */
export async function runCommand(name: string, plan: PlanFn, args: string[], o: CommonOpts): Promise<number> {
  let p: Plan;
  try {
    p = plan(loadFrom(o), flagsFrom(o), args, o);
  } catch (e) {
    return printError(e, o.json ?? false, name);
  }
  try {
    return await runPlan(p, o);
  } catch (e) {
    // Setting up the run itself failed (e.g. an unwritable --cache-dir).
    return printError(e, o.json ?? false, name);
  }
}
