// The `domu` command line: parses flags, loads the plan, hands it to the pipeline and prints
// the result. User errors are one line (plus a hint) and exit 2 or 1; never a stack trace.
import { dirname, resolve } from 'node:path';
import { existsSync, statSync } from 'node:fs';
import { Command, Option } from 'commander';
import { asDomuError, DomuError, errorMessage, InputError, EXIT_BAD_INPUT } from '../core/errors.js';
import { flagOverride, loadDescription, parseSetFlag, type Override } from '../model/description.js';
import { defaultCacheDir } from '../core/cache.js';
import { BUILD_STAGES, planBuild, planConfigs, planFetch, planModules, type Plan, type PlanFlags } from '../pipeline/plan.js';
import { planRelease } from '../pipeline/tasks/release.js';
import { planVerify } from '../pipeline/tasks/verify.js';
import { Run, type OutputMode } from '../pipeline/run.js';
import type { Description } from '../model/schema.js';
import { parseEpoch } from '../core/epoch.js';
import { doctor, formatDoctor } from './doctor.js';
import { buildSummary, formatSummary, type Summary } from './summary.js';
import { DOMU_VERSION } from '../core/version.js';

interface CommonOpts {
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
  timeout?: string;
  dist?: string;
}

const collect = (v: string, prev: string[] = []) => [...prev, v];

function withCommon(cmd: Command): Command {
  return cmd
    .option('--config <file>', 'build description (default: ./guest.yaml when present)')
    .option('--out <dir>', 'output directory', 'out')
    .option('--json', 'print one JSON summary on stdout (progress goes to stderr)')
    .option('--verbose', 'show command lines and tool output')
    .option('--jobs <n>', 'parallel compile jobs (default: number of CPUs)')
    .option('--no-cache', 'ignore cached results and redo every stage')
    .option('--cache-dir <dir>', 'cache directory (default: $XDG_CACHE_HOME/domu or ~/.cache/domu)')
    .option('--set <key=value>', 'override a description key, e.g. --set image.size=2G (repeatable)', collect)
    .option('--busybox-version <version>', 'busybox release to build (busybox.version)')
    .addOption(new Option('--libc <libc>', 'C library (busybox.libc)').choices(['glibc', 'musl']))
    .option('--strict-version', 'never substitute another busybox version (fail instead)')
    .option('--source <path|url>', 'a busybox release tarball to use (tried before upstream)')
    .option('--sha256 <hash>', 'expected sha256 of the tarball (required for versions not in busybox-config/releases.hash)')
    .option('--pure-js', 'decompress with unbzip2-stream instead of a native bzip2 child')
    .addOption(new Option('--populate <how>', 'how files get into the image (image.populate)').choices(['auto', 'rootless', 'mount']))
    .option('--source-date-epoch <seconds>', 'timestamp for everything in the image (default: $SOURCE_DATE_EPOCH, else the busybox release date)')
    .option('--force-vermagic', 'copy modules built for another kernel release anyway (a warning each)')
    .option('--allow-inconsistent', 'hosts that disagree on kernel, ramdisk, disk or bridge are a warning, not an error');
}

function withPublish(cmd: Command): Command {
  return cmd
    .option('--publish', 'copy the result into the shared store (store.path) under a lock, atomically')
    .option('--store <dir>', 'publish into this directory instead of store.path (e.g. where this host mounts the store)')
    .option('--allow-unmounted', 'publish into a store directory that is not a mount point (local stores, tests)')
    .option('--force', 'overwrite generated files on the store that were edited by hand (keeping <file>.bak)')
    .option('--lock-timeout <seconds>', 'how long to wait for another publisher (default 600)');
}

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
  };
}

function publishFrom(o: CommonOpts): PlanFlags['publish'] {
  const needs = (['store', 'allowUnmounted', 'force', 'lockTimeout'] as const).filter((k) => o[k] !== undefined);
  if (!o.publish) {
    if (needs.length) throw new InputError(`--${needs[0]!.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)} only applies with --publish`);
    return undefined;
  }
  if (o.lockTimeout !== undefined && !/^\d+(\.\d+)?$/.test(o.lockTimeout)) throw new InputError(`--lock-timeout ${o.lockTimeout}: expected a number of seconds`);
  return { allowUnmounted: o.allowUnmounted ?? false, force: o.force ?? false, lockTimeoutMs: Math.round(Number(o.lockTimeout ?? 600) * 1000), store: o.store === undefined ? undefined : resolve(o.store) };
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

function printError(error: unknown, json: boolean, command: string): number {
  const e = asDomuError(error);
  const known = e instanceof DomuError;
  const code = known ? e.exitCode : 1;
  const message = known ? e.message : `internal error: ${errorMessage(e)}`;
  const [first, ...rest] = message.split('\n');
  process.stderr.write(`domu ${command}: error: ${first}\n${rest.map((l) => `${l}\n`).join('')}`);
  if (known && e.hint) process.stderr.write(`  hint: ${e.hint}\n`);
  if (!known && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n(this is a bug in domu; please report it with the log)\n`);
  if (json) {
    const summary: Partial<Summary> = { ok: false, command, exitCode: code, error: { message, hint: known ? e.hint : undefined }, stages: [], warnings: [] };
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  }
  return code;
}

/**
 * The cache directory. Paths below it reach make's command line (CONFIG_PREFIX=…, the build
 * directory), where make expands `$(…)` even in a value: only plain path characters are taken.
 */
function cacheDirOf(o: CommonOpts): string {
  const dir = resolve(o.cacheDir ?? defaultCacheDir());
  if (!/^[A-Za-z0-9._+,@%=:~\/-]+$/.test(dir)) {
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
    process.stdout.write(mode === 'json' ? `${JSON.stringify(summary, null, 2)}\n` : `${formatSummary(summary)}\n`);
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

function seconds(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  if (!/^\d+(\.\d+)?$/.test(v) || Number(v) <= 0) throw new InputError(`${flag} ${v}: expected a positive number of seconds`);
  return Number(v);
}

function pipelineCommand(name: string, plan: (d: Description, f: PlanFlags, args: string[], o: CommonOpts) => Plan) {
  return async (...params: unknown[]) => {
    // commander passes the positional arguments first, then the options.
    const args = params.length > 2 ? (params[0] as string[]) : [];
    const o = params[params.length > 2 ? 1 : 0] as CommonOpts;
    let p: Plan;
    try {
      p = plan(loadFrom(o), flagsFrom(o), args, o);
    } catch (e) {
      process.exitCode = printError(e, o.json ?? false, name);
      return;
    }
    try {
      process.exitCode = await runPlan(p, o);
    } catch (e) {
      // Setting up the run itself failed (e.g. an unwritable --cache-dir).
      process.exitCode = printError(e, o.json ?? false, name);
    }
  };
}

export function program(): Command {
  const p = new Command('domu')
    .description('Build a static busybox Xen guest image and its per-host domain configs')
    .version(DOMU_VERSION, '-V, --version')
    .showHelpAfterError('(run `domu --help` for usage)')
    .exitOverride();
  withPublish(withCommon(p.command('build').description('run the whole pipeline into --out (npm run build:image)')))
    .option('--until <stage>', `stop after this stage (${BUILD_STAGES.join(', ')})`)
    .action(pipelineCommand('build', planBuild));
  withCommon(p.command('fetch').description('source stage only: obtain and verify the busybox tarball; print its path and sha256')).action(pipelineCommand('fetch', planFetch));
  p.command('doctor')
    .description('check the programs the pipeline needs and say what to install')
    .option('--json', 'machine-readable report')
    .action(async (o: { json?: boolean }) => {
      const r = await doctor();
      process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatDoctor(r)}\n`);
      process.exitCode = r.ok ? 0 : 1;
    });
  withCommon(p.command('modules').description('module closure, load order and vermagic checks for a kernel, without building'))
    .argument('[names...]', 'module names or aliases (default: the modules: list of the build description)')
    .option('--kernel <image|dir|package>', 'the kernel: a bzImage, a /lib/modules/<release> directory, or a Debian package (default: kernel: of the description)')
    .action(pipelineCommand('modules', planModules));
  withPublish(withCommon(p.command('configs').description("regenerate every host's Xen and host configs from the description; no image work (npm run configs)"))).action(
    pipelineCommand('configs', planConfigs),
  );
  withCommon(p.command('verify').description('boot the build in --out under QEMU and check the guest (ready marker, applets, modules)'))
    .option('--timeout <seconds>', 'how long to wait for the guest (default 120)')
    .action(pipelineCommand('verify', (d, f, _a, o) => planVerify(d, f, { timeoutS: seconds(o.timeout, '--timeout') })));
  withCommon(p.command('release').description('versioned, reproducible artifacts of the build in --out: compressed image, boot files, configs, SHA256SUMS, manifest'))
    .option('--dist <dir>', 'where releases go (default dist/)')
    .action(pipelineCommand('release', (d, f, _a, o) => planRelease(d, f, { dist: o.dist === undefined ? undefined : resolve(o.dist) })));
  return p;
}

export async function main(argv: string[]): Promise<void> {
  // Past `ulimit -f` the kernel sends SIGXFSZ, whose default action kills domu with no cleanup.
  // Node ignores it at start, but the first child run through execa (signal-exit) puts the default
  // back. A listener keeps it handled: the write fails with EFBIG, reported in one line.
  process.on('SIGXFSZ', () => {});
  try {
    await program().parseAsync(argv);
  } catch (e) {
    // commander's own exits (help, version, bad flags) arrive here under exitOverride.
    const ce = e as { code?: string; exitCode?: number };
    if (typeof ce.code === 'string' && ce.code.startsWith('commander.')) {
      process.exitCode = ce.code === 'commander.helpDisplayed' || ce.code === 'commander.version' ? 0 : EXIT_BAD_INPUT;
      return;
    }
    process.exitCode = printError(e, false, 'domu');
  }
}

await main(process.argv);
