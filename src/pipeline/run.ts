// Runs a plan's stages as listr2 tasks with one run context: run log, cleanup registry
// (run innermost-first on failure and on SIGINT/SIGTERM), abort signal and cache.
import { mkdir, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Listr, LISTR_LOGGER_STDERR_LEVELS, ListrLogger, PRESET_TIMESTAMP, ProcessOutput } from 'listr2';
import { abortError, AbortedError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { faultPoint } from '../core/fault.js';
import { activeJournal, processStart, recoverDeadRuns, RunJournal, setActiveJournal } from '../core/journal.js';
import { acquireLock, OUT_LOCK } from '../store/storelock.js';
import type { Logger } from '../core/log.js';
import { RunLog } from '../core/log.js';
import { explainStageError, type Places } from '../core/stage-errors.js';
import { Cache } from '../core/cache.js';
import { CleanupRegistry } from '../core/cleanup.js';
import type { StageContext } from '../core/context.js';

export interface StageResult {
  cacheHit: boolean;
  /** What the stage produced, for the JSON summary (paths, hashes, counts). */
  outputs: Record<string, unknown>;
  /** A short phrase for the task line, e.g. "busybox 1.35.0 (cached)". */
  note?: string;
}

export interface PipelineStage {
  name: string;
  title: string;
  run(ctx: StageContext): Promise<StageResult>;
}

export type StageStatus = 'done' | 'cached' | 'failed' | 'skipped';

export interface StageRecord {
  name: string;
  status: StageStatus;
  ms: number;
  cacheHit: boolean;
  outputs: Record<string, unknown>;
  error?: string;
}

/**
 * A check of the plan that needs the run: it runs before any stage, once the --out lock is held
 * (e.g. whether --out's file system can hold an image of image.size, probed there). What it
 * creates it registers with `cleanup`; an InputError it throws is exit 2, as at plan time.
 */
export type PreflightCheck = (env: { cleanup: CleanupRegistry; log: Logger; signal: AbortSignal }) => Promise<void>;

/** tty: listr2's default renderer; plain: timestamped lines; json: plain lines on stderr. */
export type OutputMode = 'tty' | 'plain' | 'json';

export interface RunOptions {
  mode: OutputMode;
  cacheDir: string;
  verbose?: boolean;
  command: string;
  /** Hold this directory's lock (out/.domu.lock) for the whole run (see Plan.lockOut). */
  lockOut?: { dir: string; create: boolean } | undefined;
  /** Checks run before any stage, after the --out lock is taken (see Plan.preflight). */
  preflight?: PreflightCheck[] | undefined;
}

/** Another run on the same --out is waited for this long (a compile can take a while). */
const OUT_LOCK_WAIT_MS = 6 * 3600_000;

const KEEP_RUN_DIRS = 10;

export class Run {
  readonly controller = new AbortController();
  readonly cleanup = new CleanupRegistry();
  readonly cache: Cache;
  readonly workDir: string;
  readonly runLog: RunLog;
  readonly records: StageRecord[] = [];
  private journal: RunJournal | undefined;

  constructor(readonly opts: RunOptions) {
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    this.workDir = join(opts.cacheDir, 'runs', `${stamp}-${opts.command}-${process.pid}`);
    this.runLog = new RunLog({ file: join(this.workDir, 'run.log'), verbose: opts.verbose ?? false });
    // Corrupt cache entries are reported as warnings of the run (stages may name their own logger).
    this.cache = new Cache(opts.cacheDir, this.controller.signal, this.runLog.logger('cache'));
  }

  /** Where this run writes, for naming a full file system (core/stage-errors.ts). */
  private get places(): Places {
    return { cacheDir: this.opts.cacheDir, outDir: this.opts.lockOut?.dir };
  }

  get logFile(): string {
    return join(this.workDir, 'run.log');
  }

  /** Abort the run (signal handler): children are killed, then cleanup runs. */
  abort(reason: string): void {
    if (!this.controller.signal.aborted) this.controller.abort(new AbortedError(reason));
  }

  /**
   * Before any stage: undo what dead runs left (their journals), open this run's journal, take
   * the --out lock. Lines for the user go straight to stderr (the progress display is not up yet).
   */
  private async prepare(log: Logger): Promise<void> {
    this.runLog.sink = (level, _scope, msg) => {
      if (level !== 'debug') process.stderr.write(`domu: ${level === 'warn' ? 'warning: ' : ''}${msg}\n`);
    };
    try {
      const env = { log, signal: new AbortController().signal };
      for (const r of await recoverDeadRuns(this.opts.cacheDir, env)) {
        const what = `an interrupted run (pid ${r.pid}, domu ${r.command}, started ${r.started})`;
        if (r.cleaned.length) log.warn(`cleaned up after ${what}: ${r.cleaned.join('; ')}`);
        for (const f of r.failed) log.warn(`could not clean up after ${what}: ${f} (tried again next run)`);
      }
      this.journal = RunJournal.open(this.opts.cacheDir, this.opts.command);
      setActiveJournal(this.journal);
      const out = this.opts.lockOut;
      if (out && (await stat(out.dir).then((st) => !st.isDirectory(), () => false))) {
        throw new InputError(`--out ${out.dir} is not a directory`, 'give a directory for the build output (it is made when missing)');
      }
      if (out && (out.create || (await isDirectory(out.dir)))) {
        // A directory made only to hold the lock goes again if the run put nothing in it.
        const made = await mkdir(out.dir, { recursive: true });
        if (made !== undefined) this.cleanup.push(`remove ${out.dir} if the run left it empty`, () => rmdir(out.dir).catch(() => undefined));
        const release = await acquireLock(out.dir, OUT_LOCK, { timeoutMs: OUT_LOCK_WAIT_MS, log, signal: this.controller.signal, command: `domu ${this.opts.command}` });
        this.cleanup.push(`release the lock of ${out.dir}`, release, { kind: 'lock', path: join(out.dir, OUT_LOCK.file) });
      }
      for (const check of this.opts.preflight ?? []) await check({ cleanup: this.cleanup, log, signal: this.controller.signal });
    } finally {
      this.runLog.sink = undefined;
    }
  }

  async execute(stages: PipelineStage[]): Promise<StageRecord[]> {
    await mkdir(this.workDir, { recursive: true });
    const interactive = this.opts.mode === 'tty';
    const log = this.runLog.logger();
    log.debug(`domu ${this.opts.command}: ${stages.map((s) => s.name).join(' → ')}`);
    try {
      await this.prepare(log);
    } catch (e) {
      await this.undoAll(log);
      throw this.controller.signal.aborted ? abortError(this.controller.signal) : explainStageError('prepare', e, this.places);
    }
    let failure: unknown;
    // Plain timestamped lines; under --json they go to stderr so that stdout is only the summary.
    const plainOptions = {
      timestamp: PRESET_TIMESTAMP,
      ...(this.opts.mode === 'json'
        ? { logger: new ListrLogger({ useIcons: true, toStderr: LISTR_LOGGER_STDERR_LEVELS, processOutput: new ProcessOutput(process.stderr, process.stderr) }) }
        : {}),
    };
    const tasks = new Listr(
      stages.map((stage) => ({
        title: stage.title,
        task: async (_: unknown, task: { output: string; title: string }) => {
          const started = performance.now();
          const stageLog = this.runLog.logger(stage.name);
          this.runLog.sink = (level, _scope, msg) => {
            if (level === 'debug') {
              if (interactive) task.output = msg;
              return;
            }
            task.output = level === 'warn' ? `warning: ${msg}` : msg;
          };
          const ctx: StageContext = {
            workDir: this.workDir,
            log: stageLog,
            signal: this.controller.signal,
            cleanup: this.cleanup,
            cache: this.cache,
            progress: interactive ? (t) => (task.output = t) : () => {},
          };
          const record: StageRecord = { name: stage.name, status: 'done', ms: 0, cacheHit: false, outputs: {} };
          this.records.push(record);
          try {
            if (this.controller.signal.aborted) throw abortError(this.controller.signal);
            await faultPoint(`stage:${stage.name}`, this.controller.signal);
            const r = await stage.run(ctx);
            record.cacheHit = r.cacheHit;
            record.outputs = r.outputs;
            record.status = r.cacheHit ? 'cached' : 'done';
            task.title = `${stage.title}${r.note ? `: ${r.note}` : ''}${r.cacheHit ? ' (cached)' : ''}`;
          } catch (e) {
            // Whatever a stage threw while the run was being aborted, the cause is the abort.
            const err = this.controller.signal.aborted ? abortError(this.controller.signal) : explainStageError(stage.name, e, this.places);
            record.status = 'failed';
            record.error = errorMessage(err);
            failure = err;
            stageLog.debug(`failed: ${err instanceof Error && !(err instanceof DomuError) ? err.stack : errorMessage(err)}`);
            // listr2 shows one line; the CLI prints the whole message after cleanup.
            throw new Error(errorMessage(err).split('\n')[0]);
          } finally {
            record.ms = Math.round(performance.now() - started);
            this.runLog.sink = undefined;
          }
        },
      })),
      {
        concurrent: false,
        exitOnError: true,
        registerSignalListeners: false,
        collectErrors: false,
        renderer: interactive ? 'default' : 'simple',
        fallbackRenderer: 'simple',
        rendererOptions: interactive ? { collapseErrors: false } : plainOptions,
        fallbackRendererOptions: plainOptions,
      } as ConstructorParameters<typeof Listr>[1],
    );
    try {
      await tasks.run();
    } catch (e) {
      failure ??= e;
    }
    for (const s of stages.slice(this.records.length)) {
      this.records.push({ name: s.name, status: 'skipped', ms: 0, cacheHit: false, outputs: {} });
    }
    // Undo whatever is still registered (on success too: a stage keeps what it released).
    await this.undoAll(log);
    if (failure !== undefined) {
      if (this.controller.signal.aborted) failure = abortError(this.controller.signal);
      log.info(`failed: ${errorMessage(failure)}`);
      throw failure;
    }
    return this.records;
  }

  /** Run the cleanup registry; when all of it was undone, the journal has nothing left for a later run. */
  private async undoAll(log: Logger): Promise<void> {
    if ((await this.cleanup.runAll(log)).length === 0) await this.journal?.close();
  }

  async close(): Promise<void> {
    if (activeJournal() === this.journal) setActiveJournal(undefined);
    await this.runLog.close();
    await this.cache.fileHashes.save();
    await pruneRuns(join(this.opts.cacheDir, 'runs'), KEEP_RUN_DIRS);
  }
}

/**
 * Keep the newest `keep` run directories of finished runs. A directory whose run is still going
 * (its name ends in a live pid) is never removed: it holds that run's build tree, and runs on one
 * cache overlap (a compile of minutes, while short runs come and go, lost its tree to them).
 */
async function pruneRuns(dir: string, keep: number): Promise<void> {
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  const finished = names.filter((n) => {
    const pid = Number(/-(\d+)$/.exec(n)?.[1]);
    return !(pid > 0 && processStart(pid) !== undefined);
  });
  for (const n of finished.slice(0, Math.max(0, finished.length - keep))) await rm(join(dir, n), { recursive: true, force: true });
}

async function isDirectory(p: string): Promise<boolean> {
  return stat(p).then((s) => s.isDirectory(), () => false);
}
