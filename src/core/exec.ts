// The one way this project runs programs: execa with an argument array, never a shell.
// Output is captured line by line into the run log; the child is killed when the run aborts.
import { constants, existsSync } from 'node:fs';
import { access } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { abortError, DomuError } from './errors.js';
import type { Logger } from './log.js';

export interface ExecEnv {
  log: Logger;
  signal: AbortSignal;
}

export interface ExecOptions {
  cwd?: string;
  /** Extra environment variables (the process environment is inherited). */
  env?: Record<string, string | undefined>;
  /** Text or bytes written to the child's stdin; otherwise stdin is ignored. */
  input?: string | Uint8Array;
  /** Called for every output line (stdout and stderr), e.g. for progress parsing. */
  onLine?: (line: string, stream: 'stdout' | 'stderr') => void;
  /** Exit codes that count as success (default [0]). */
  okExitCodes?: number[];
  /** Keep stdout/stderr in memory for the result (default true). */
  buffer?: boolean;
  /** Do not copy every line into the run log (e.g. huge binary-ish listings). */
  quiet?: boolean;
  /** Kill after this many ms. */
  timeoutMs?: number;
  /** What to tell the user to do when the program is not installed. */
  missingHint?: string;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

// Children die with us. A run stopped with SIGINT/SIGTERM kills its children itself (cancelSignal),
// but SIGKILL runs nothing: a `make` or `mke2fs` would go on writing into a temp path that the next
// run's journal recovery removes. util-linux's setpriv (Essential on Debian) sets the child's
// parent-death signal (PR_SET_PDEATHSIG, kept across its execve) before it becomes the program, so
// the kernel kills it when domu dies. Without setpriv the program runs directly.
const SETPRIV = ['/usr/bin/setpriv', '/bin/setpriv'].find((p) => existsSync(p));
const SETPRIV_MISSING = /^setpriv: failed to execute .*: No such file or directory$/m;

export function dyingWithUs(file: string, args: readonly string[]): [string, string[]] {
  return SETPRIV ? [SETPRIV, ['--pdeathsig', 'KILL', '--', file, ...args]] : [file, [...args]];
}

export function commandLine(file: string, args: readonly string[]): string {
  return [file, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}

// execa (and its ~250 modules) is loaded when a run starts its first program, not when the CLI
// starts: `domu --help`, a no-op build and `domu configs` start none. It is always loaded BEFORE a
// child is started (never between starting a child and reading its output).
let execaModule: Promise<typeof import('execa')> | undefined;
const loadExeca = () => (execaModule ??= import('execa'));

export async function run(env: ExecEnv, file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  return runFedBy(env, undefined, file, args, opts);
}

/**
 * `producer | consumer` without a shell, e.g. `yes '' | make oldconfig` (or just the consumer when
 * `producer` is undefined). Only the consumer's exit decides success: the producer normally dies
 * of SIGPIPE when the consumer stops reading, and that is not a failure.
 */
export async function runFedBy(env: ExecEnv, producer: readonly [string, readonly string[]] | undefined, file: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  if (env.signal.aborted) throw abortError(env.signal);
  const shown = `${producer ? `${commandLine(...producer)} | ` : ''}${commandLine(file, args)}`;
  env.log.debug(`$ ${shown}${opts.cwd ? `   (in ${opts.cwd})` : ''}`);
  const tap = (stream: 'stdout' | 'stderr') =>
    function* (line: unknown) {
      const text = String(line);
      if (!opts.quiet) env.log.debug(`${stream === 'stderr' ? '! ' : '| '}${text}`);
      opts.onLine?.(text, stream);
      yield text;
    };
  const options = {
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
    env: opts.env ?? {},
    extendEnv: true,
    ...(producer || opts.input === undefined ? {} : { input: opts.input }),
    stdout: [tap('stdout')],
    stderr: [tap('stderr')],
    buffer: opts.buffer ?? true,
    maxBuffer: 256 * 1024 * 1024,
    reject: false,
    cancelSignal: env.signal,
    forceKillAfterDelay: 3000,
    stripFinalNewline: true,
    ...(opts.timeoutMs === undefined ? {} : { timeout: opts.timeoutMs }),
  } as const;
  const { execa } = await loadExeca();
  if (env.signal.aborted) throw abortError(env.signal);
  let result;
  if (producer) {
    const feeder = execa(...dyingWithUs(producer[0], producer[1]), { stdin: 'ignore', buffer: false, reject: false, cancelSignal: env.signal });
    result = await feeder.pipe(...dyingWithUs(file, args), options);
    feeder.kill();
    await feeder; // reaped; its SIGPIPE/EPIPE end is expected and ignored
  } else {
    result = await execa(...dyingWithUs(file, args), { ...options, ...(opts.input === undefined ? { stdin: 'ignore' as const } : {}) });
  }
  const stdout = typeof result.stdout === 'string' ? result.stdout : '';
  const stderr = typeof result.stderr === 'string' ? result.stderr : '';
  return settle(env, result, file, shown, opts, stdout, stderr);
}

/** Turn an execa result into ours: abort, missing program, time-out and bad exit become errors. */
function settle(
  env: ExecEnv,
  result: { isCanceled: boolean; timedOut: boolean; exitCode?: number | undefined; signal?: string | undefined },
  file: string,
  shown: string,
  opts: Pick<ExecOptions, 'okExitCodes' | 'missingHint' | 'timeoutMs'>,
  stdout: string,
  stderr: string,
): ExecResult {
  if (result.isCanceled || env.signal.aborted) throw abortError(env.signal);
  const errno = (result as { code?: string }).code;
  if ((errno === 'ENOENT' && result.exitCode === undefined) || (SETPRIV && result.exitCode === 127 && SETPRIV_MISSING.test(stderr))) {
    throw new DomuError(`program not found: ${file}`, { hint: opts.missingHint ?? 'run `domu doctor` to see what to install' });
  }
  if (result.timedOut) throw new DomuError(`${shown}: timed out after ${opts.timeoutMs} ms`);
  const exitCode = result.exitCode ?? -1;
  if (!(opts.okExitCodes ?? [0]).includes(exitCode)) {
    const why = result.signal ? `killed by ${result.signal}` : `exit code ${exitCode}`;
    const tail = lastLines(stderr || stdout, 3);
    throw new ExecError(`${shown}: ${why}${tail ? `: ${tail}` : ''}`, exitCode, stdout, stderr);
  }
  return { exitCode, stdout, stderr };
}

export class ExecError extends DomuError {
  constructor(
    message: string,
    /** The program's exit status (not the CLI's exit code). */
    readonly status: number,
    readonly stdout: string,
    readonly stderr: string,
  ) {
    super(message);
    this.name = 'ExecError';
  }
}

function lastLines(text: string, n: number): string {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).slice(-n).join(' | ');
}

/** Whether a program can be found on PATH (no child process). */
export async function which(program: string): Promise<string | undefined> {
  if (program.includes('/')) return (await access(program, constants.X_OK).then(() => true, () => false)) ? program : undefined;
  const dirs = (process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin']);
  for (const d of dirs) {
    const p = join(d, program);
    if (await access(p, constants.X_OK).then(() => true, () => false)) return p;
  }
  return undefined;
}

export interface StreamChild {
  /** The child's stdout as raw bytes. The caller must read it to the end or kill the child. */
  stdout: Readable;
  /** Settles when the child has exited: resolves on an ok exit code, rejects as run() does otherwise. */
  exit: Promise<ExecResult>;
  /** Stop the child (SIGTERM, SIGKILL after 3 s); `exit` then rejects. Harmless after it exited. */
  kill(): void;
}

/**
 * Start a program whose stdout the caller consumes as a stream (e.g. `bzip2 -dc FILE`).
 * Argument array, no shell; stderr is captured for the error message; the child is killed when
 * the run aborts. `exit` never causes an unhandled rejection if the caller ignores it.
 * The promise settles as soon as the child is started: attach the reader of `stdout` right away,
 * with no other `await` in between (load what the reader needs before calling this).
 */
export async function spawnStream(env: ExecEnv, file: string, args: readonly string[], opts: Pick<ExecOptions, 'cwd' | 'env' | 'okExitCodes' | 'missingHint'> = {}): Promise<StreamChild> {
  const { execa } = await loadExeca();
  if (env.signal.aborted) throw abortError(env.signal);
  const shown = commandLine(file, args);
  env.log.debug(`$ ${shown} |${opts.cwd ? `   (in ${opts.cwd})` : ''}`);
  const sub = execa(...dyingWithUs(file, args), {
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
    env: opts.env ?? {},
    extendEnv: true,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: { stdout: false, stderr: true },
    maxBuffer: 1024 * 1024,
    reject: false,
    cancelSignal: env.signal,
    forceKillAfterDelay: 3000,
    stripFinalNewline: true,
  });
  const exit = sub.then((result) => {
    const stderr = typeof result.stderr === 'string' ? result.stderr : '';
    for (const line of stderr.split('\n')) if (line.trim()) env.log.debug(`! ${line}`);
    return settle(env, result, file, shown, opts, '', stderr);
  });
  exit.catch(() => undefined);
  return {
    stdout: sub.stdout,
    exit,
    kill: () => {
      sub.kill();
    },
  };
}

