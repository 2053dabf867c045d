// The run logger: every line goes to the run log file; a display sink (listr2 task output,
// plain timestamped lines, or nothing under --json) shows the ones meant for the user.
// Stages see only this interface, never listr2.
import { createWriteStream, mkdirSync, type WriteStream } from 'node:fs';
import { dirname } from 'node:path';

export type LogLevel = 'debug' | 'info' | 'warn';

export interface Logger {
  /** A line for the user (progress, decisions). */
  info(msg: string): void;
  /** Something the user should know about; also collected into the JSON summary. */
  warn(msg: string): void;
  /** Detail for the run log only (command lines, tool output). */
  debug(msg: string): void;
  /** The same log, with lines tagged by a stage name. */
  child(scope: string): Logger;
}

export type DisplaySink = (level: LogLevel, scope: string, msg: string) => void;

export interface RunLogOptions {
  /** Path of the run log file; undefined keeps no file (tests). */
  file?: string | undefined;
  sink?: DisplaySink | undefined;
  /** Show debug lines on the display too (--verbose). */
  verbose?: boolean;
}

export class RunLog {
  readonly warnings: { scope: string; message: string }[] = [];
  private stream: WriteStream | undefined;
  /** Why the log file stopped being written (e.g. ENOSPC), if it did. */
  fileError: Error | undefined;
  sink: DisplaySink | undefined;
  private readonly verbose: boolean;

  constructor(opts: RunLogOptions = {}) {
    if (opts.file) {
      mkdirSync(dirname(opts.file), { recursive: true });
      const stream = createWriteStream(opts.file, { flags: 'w' });
      // A full disk (ENOSPC) or a vanished directory must not crash the run with an unhandled
      // 'error' event: the file log stops there, the display goes on, the run reports its own errors.
      stream.on('error', (e) => {
        this.fileError = e;
        if (this.stream === stream) this.stream = undefined;
      });
      this.stream = stream;
    }
    this.sink = opts.sink;
    this.verbose = opts.verbose ?? false;
  }

  write(level: LogLevel, scope: string, msg: string): void {
    if (level === 'warn') this.warnings.push({ scope, message: msg });
    this.stream?.write(`${new Date().toISOString()} ${level.padEnd(5)} ${scope ? `[${scope}] ` : ''}${msg}\n`);
    if (this.sink && (level !== 'debug' || this.verbose)) this.sink(level, scope, msg);
  }

  logger(scope = ''): Logger {
    return {
      info: (m) => this.write('info', scope, m),
      warn: (m) => this.write('warn', scope, m),
      debug: (m) => this.write('debug', scope, m),
      child: (s) => this.logger(scope ? `${scope}/${s}` : s),
    };
  }

  async close(): Promise<void> {
    const s = this.stream;
    this.stream = undefined;
    if (s && !s.destroyed) await new Promise<void>((res) => s.end(res));
  }
}

/** A logger that keeps lines in memory: for tests and for library callers without a run. */
export function memoryLogger(lines: string[] = []): Logger & { lines: string[] } {
  const make = (scope: string): Logger => ({
    info: (m) => lines.push(`info ${scope}${m}`),
    warn: (m) => lines.push(`warn ${scope}${m}`),
    debug: (m) => lines.push(`debug ${scope}${m}`),
    child: (s) => make(`${scope}[${s}] `),
  });
  return Object.assign(make(''), { lines });
}
