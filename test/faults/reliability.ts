// Rows for docs/reliability.md. A fault test describes its case with `reliability(task, row)`;
// the reliability reporter (reliability-reporter.ts) collects the rows with each test's real
// result after the run and writes the table. Nothing in the table is written by hand.
import type { TestContext } from 'vitest';

type Task = TestContext['task'];

export type ReliabilityArea = 'interruption' | 'disk full' | 'corrupt cache' | 'concurrency' | 'hostile input';

export interface ReliabilityRow {
  area: ReliabilityArea;
  /** What was done, e.g. "SIGKILL at the image stage's start". */
  case: string;
  /** What must happen, e.g. "exit 2; nothing partial; next run succeeds". */
  expected: string;
  /** What was seen, filled in by the test as it runs (exit code, first error line, what was cleaned). */
  observed?: string;
}

declare module 'vitest' {
  interface TaskMeta {
    reliability?: ReliabilityRow;
  }
}

/** Attach the case's row to the running test; `observe` adds what the run showed. */
export function reliability(task: Task, row: ReliabilityRow): { observe: (text: string) => void } {
  task.meta.reliability = { ...row };
  return {
    observe: (text: string) => {
      const r = task.meta.reliability!;
      r.observed = r.observed ? `${r.observed}; ${text}` : text;
    },
  };
}
