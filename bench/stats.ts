// Shared measuring helpers for the benchmarks.
import { run, type ExecEnv } from '../src/core/exec.js';

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Seconds `f` takes, after a `sync` so that no run pays for the previous one's writeback. */
export async function timed(env: ExecEnv, f: () => Promise<unknown>): Promise<number> {
  await run(env, 'sync', []);
  const t = performance.now();
  await f();
  return (performance.now() - t) / 1000;
}
