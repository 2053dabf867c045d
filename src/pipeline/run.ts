// Runs a plan's stages as listr2 tasks with one run context: run log, cleanup registry
// (run innermost-first on failure and on SIGINT/SIGTERM), abort signal and cache.
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Listr, LISTR_LOGGER_STDERR_LEVELS, ListrLogger, PRESET_TIMESTAMP, ProcessOutput } from 'listr2';
import { abortError, AbortedError, DomuError, errorMessage } from '../lib/errors.js';
import { faultPoint } from '../lib/fault.js';
import { RunLog } from '../lib/log.js';
import { explainStageError } from '../lib/stage-errors.js';
import { Cache } from './cache.js';
import { CleanupRegistry } from './cleanup.js';
import type { StageContext } from './context.js';

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

/** tty: listr2's default renderer; plain: timestamped lines; json: plain lines on stderr. */
export type OutputMode = 'tty' | 'plain' | 'json';

export interface RunOptions {
  mode: OutputMode;
  cacheDir: string;
  verbose?: boolean;
  command: string;
}

const KEEP_RUN_DIRS = 10;

export class Run {
  readonly controller = new AbortController();
  readonly cleanup = new CleanupRegistry();
  readonly cache: Cache;
  readonly workDir: string;
  readonly runLog: RunLog;
  readonly records: StageRecord[] = [];

  constructor(readonly opts: RunOptions) {
    this.cache = new Cache(opts.cacheDir, this.controller.signal);
    const stamp = new Date().toISOString().replace(/[:.]/g, '-');
    this.workDir = join(opts.cacheDir, 'runs', `${stamp}-${opts.command}-${process.pid}`);
    this.runLog = new RunLog({ file: join(this.workDir, 'run.log'), verbose: opts.verbose ?? false });
  }

  get logFile(): string {
    return join(this.workDir, 'run.log');
  }

  /** Abort the run (signal handler): children are killed, then cleanup runs. */
  abort(reason: string): void {
    if (!this.controller.signal.aborted) this.controller.abort(new AbortedError(reason));
  }

  async execute(stages: PipelineStage[]): Promise<StageRecord[]> {
    await mkdir(this.workDir, { recursive: true });
    const interactive = this.opts.mode === 'tty';
    const log = this.runLog.logger();
    log.debug(`domu ${this.opts.command}: ${stages.map((s) => s.name).join(' → ')}`);
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
            const err = this.controller.signal.aborted ? abortError(this.controller.signal) : explainStageError(stage.name, e);
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
    await this.cleanup.runAll(log);
    if (failure !== undefined) {
      if (this.controller.signal.aborted) failure = abortError(this.controller.signal);
      log.info(`failed: ${errorMessage(failure)}`);
      throw failure;
    }
    return this.records;
  }

  async close(): Promise<void> {
    await this.runLog.close();
    await pruneRuns(join(this.opts.cacheDir, 'runs'), KEEP_RUN_DIRS);
  }
}

async function pruneRuns(dir: string, keep: number): Promise<void> {
  const names = (await readdir(dir).catch(() => [] as string[])).sort();
  for (const n of names.slice(0, Math.max(0, names.length - keep))) await rm(join(dir, n), { recursive: true, force: true });
}
