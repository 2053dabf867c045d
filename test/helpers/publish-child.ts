// A publisher in a process of its own, for the lock, signal and SIGKILL tests of publish:
//   node --import tsx test/helpers/publish-child.ts '<JSON ChildSpec>'
// It prints one JSON object per line on stdout: {log, msg} for every log line, {event: 'locked'}
// or {event: 'copying', rel, bytes} where it pauses, then {event: 'done', output} or
// {event: 'error', message, exitCode}. A pause lasts until a line arrives on stdin, or until
// SIGTERM/SIGINT, which abort the publish as the CLI does (then the cleanup registry runs).
import { createInterface } from 'node:readline';
import { AbortedError, DomuError, errorMessage } from '../../src/core/errors.js';
import type { Logger } from '../../src/core/log.js';
import { publish, type PublishHooks, type PublishInput } from '../../src/store/publish.js';
import { makeTestContext } from './context.js';

export interface ChildSpec {
  input: PublishInput;
  /** Say `ready` and wait for a line before publishing (to start several publishers at once). */
  waitBeforeStart?: boolean;
  /** Pause once the store lock is held. */
  pauseAfterLock?: boolean;
  /** Pause after the first chunk copied into the store's temporary file of this path. */
  pauseInCopy?: string;
}

export type ChildEvent =
  | { log: 'info' | 'warn' | 'debug'; msg: string }
  | { event: 'ready' }
  | { event: 'locked' }
  | { event: 'copying'; rel: string; bytes: number }
  | { event: 'done'; output: unknown }
  | { event: 'error'; message: string; exitCode: number };

function emit(e: ChildEvent): void {
  process.stdout.write(`${JSON.stringify(e)}\n`);
}

function lineLogger(): Logger {
  const logger: Logger = {
    info: (msg) => emit({ log: 'info', msg }),
    warn: (msg) => emit({ log: 'warn', msg }),
    debug: (msg) => emit({ log: 'debug', msg }),
    child: () => logger,
  };
  return logger;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as ChildSpec;
const base = await makeTestContext();
const ctx = { ...base, log: lineLogger() };
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const aborted = new Promise<void>((res) => ctx.signal.addEventListener('abort', () => res(), { once: true }));
const pause = async () => {
  await Promise.race([lines.next(), aborted]);
};
for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => ctx.controller.abort(new AbortedError(sig)));

let paused = false;
const hooks: PublishHooks = {
  afterLock: spec.pauseAfterLock
    ? async () => {
        emit({ event: 'locked' });
        await pause();
      }
    : undefined,
  afterChunk: async (rel, bytes) => {
    if (rel !== spec.pauseInCopy || paused) return;
    paused = true;
    emit({ event: 'copying', rel, bytes });
    await pause();
  },
};

let code = 0;
try {
  if (spec.waitBeforeStart) {
    emit({ event: 'ready' });
    await pause();
  }
  emit({ event: 'done', output: await publish(spec.input, ctx, hooks) });
} catch (e) {
  await ctx.cleanup.runAll(ctx.log);
  code = e instanceof DomuError ? e.exitCode : 70;
  emit({ event: 'error', message: errorMessage(e), exitCode: code });
} finally {
  await base.dispose();
}
process.exit(code);
