// Benchmark: our streaming extraction against `tar xjf`, each into a fresh directory.
// Runs alternate (domu native, tar, domu js) so that a busy machine affects all alike; `sync`
// before every timed run keeps one run's writeback out of the next one's time.
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type ExecEnv } from '../src/core/exec.js';
import { median, timed } from './stats.js';
import { memoryLogger } from '../src/core/log.js';
import { safeExtract } from '../src/fs/tar.js';

export interface ExtractBenchResult {
  runs: number;
  /** Median seconds. */
  nativeS: number;
  jsS: number;
  tarS: number;
  /** native / tar: the target is ≤ 1.3. */
  ratio: number;
  jsRatio: number;
  samples: { native: number[]; js: number[]; tar: number[] };
}



export interface ExtractBenchOptions {
  /** How many of the runs also time the pure-JS decompressor (default: all). */
  jsRuns?: number;
  /** Where the fresh directories are made (default: the system temp directory). */
  dir?: string;
  print?: boolean;
}

export async function benchExtract(tarball: string, runs = 5, opts: ExtractBenchOptions = {}): Promise<ExtractBenchResult> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const base = await mkdtemp(join(opts.dir ?? tmpdir(), 'domu-bench-'));
  const jsRuns = opts.jsRuns ?? runs;
  const samples = { native: [] as number[], js: [] as number[], tar: [] as number[] };
  const print = opts.print ?? true;
  try {
    // One untimed round of each, so that caches and the JIT are warm for every contender.
    await safeExtract({ archive: tarball, dest: join(base, 'warm-native'), env, decompressor: 'native' });
    await mkdir(join(base, 'warm-tar'));
    await run(env, 'tar', ['xjf', tarball, '-C', join(base, 'warm-tar')]);
    // Nothing is deleted until the end: on some file systems (ext4 with `discard`) deletions make
    // the following file creations slow, which would charge one contender for another's cleanup.
    for (let i = 0; i < runs; i++) {
      const n = join(base, `native-${i}`);
      samples.native.push(await timed(env, () => safeExtract({ archive: tarball, dest: n, env, decompressor: 'native' })));

      const t = join(base, `tar-${i}`);
      await mkdir(t);
      samples.tar.push(await timed(env, () => run(env, 'tar', ['xjf', tarball, '-C', t])));

      if (i < jsRuns) {
        const j = join(base, `js-${i}`);
        samples.js.push(await timed(env, () => safeExtract({ archive: tarball, dest: j, env, decompressor: 'js' })));
      }
      if (print) {
        const f = (xs: number[]) => (xs.length > i ? xs[i]!.toFixed(3) : '-');
        console.log(`run ${i + 1}/${runs}: native ${f(samples.native)} s, tar xjf ${f(samples.tar)} s, js ${f(samples.js)} s`);
      }
    }
  } finally {
    await rm(base, { recursive: true, force: true });
  }
  const nativeS = median(samples.native);
  const tarS = median(samples.tar);
  const jsS = samples.js.length ? median(samples.js) : NaN;
  const result: ExtractBenchResult = { runs, nativeS, jsS, tarS, ratio: nativeS / tarS, jsRatio: jsS / tarS, samples };
  if (print) {
    console.log(`median: native ${nativeS.toFixed(3)} s, js ${jsS.toFixed(3)} s, tar xjf ${tarS.toFixed(3)} s`);
    console.log(`ratio native/tar ${result.ratio.toFixed(2)} (target <= 1.30), js/tar ${result.jsRatio.toFixed(2)}`);
  }
  return result;
}
