// Drives a publisher in a process of its own (test/helpers/publish-child.ts): its JSON events,
// waiting for one, resuming a pause, signals, and its end.
import { join } from 'node:path';
import { execa } from 'execa';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import type { ChildEvent, ChildSpec } from './publish-child.js';

const CHILD = join(PROJECT_ROOT, 'test/helpers/publish-child.ts');

export interface PublishChild {
  pid: number;
  events: ChildEvent[];
  /** The first event (so far or to come) that matches; rejects if the child exits first. */
  waitFor(pred: (e: ChildEvent) => boolean): Promise<ChildEvent>;
  /** End a pause. */
  resume(): void;
  kill(sig: NodeJS.Signals): void;
  exit: Promise<{ exitCode: number | undefined; signal: string | undefined }>;
}

export function startPublishChild(spec: ChildSpec): PublishChild {
  const sub = execa(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(spec)], {
    cwd: PROJECT_ROOT,
    env: { NODE_OPTIONS: '' },
    stdin: 'pipe',
    buffer: false,
    reject: false,
  });
  const events: ChildEvent[] = [];
  const waiters: { pred: (e: ChildEvent) => boolean; res: (e: ChildEvent) => void }[] = [];
  let partial = '';
  let stderr = '';
  sub.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  sub.stdout.on('data', (d: Buffer) => {
    const lines = (partial + d.toString()).split('\n');
    partial = lines.pop()!;
    for (const line of lines) {
      const e = JSON.parse(line) as ChildEvent;
      events.push(e);
      for (const w of waiters.splice(0)) if (w.pred(e)) w.res(e);
      else waiters.push(w);
    }
  });
  const exit = sub.then((r) => ({ exitCode: r.exitCode, signal: r.signal }));
  return {
    pid: sub.pid!,
    events,
    waitFor: (pred) =>
      new Promise((res, rej) => {
        const seen = events.find(pred);
        if (seen) return res(seen);
        waiters.push({ pred, res });
        void exit.then((r) => rej(new Error(`child exited (${r.exitCode ?? r.signal}) before the awaited event:\n${events.map((e) => JSON.stringify(e)).join('\n')}\n${stderr}`)));
      }),
    resume: () => sub.stdin.write('go\n'),
    kill: (sig) => sub.kill(sig),
    exit,
  };
}

