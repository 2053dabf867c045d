// Benchmark: our whole image stage (rootless, with the reproducibility pass, e2fsck -fn, dumpe2fs
// and the sha256 of the image) against bare `mke2fs -t ext4 -d <staging>` into a same-size sparse
// file, and against bare mke2fs followed by `sha256sum` (the same deliverable by hand).
// Runs alternate so that a busy machine affects all alike; `sync` before every timed run.
// Images are kept until the end (deleting makes the next creations slower on some file systems).
//
//   node --import tsx bench/image.ts [STAGING_DIR]   (default: a generated busybox-like tree)
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { busyboxLikeTree } from '../test/helpers/trees.js';
import { run, type ExecEnv } from '../src/core/exec.js';
import { memoryLogger, type Logger } from '../src/core/log.js';
import { Cache } from '../src/core/cache.js';
import { CleanupRegistry } from '../src/core/cleanup.js';
import type { StageContext } from '../src/core/context.js';
import { imageStage } from '../src/stages/image.js';
import { median, timed } from './stats.js';

export interface ImageBenchOptions {
  /** Image size in bytes (default 1 GiB, the design's size). */
  size?: number;
  /** Where the images are written (default: the system temp directory). */
  dir?: string;
  /** Also time bare mke2fs + sha256sum (default true). */
  withChecksumBaseline?: boolean;
  print?: boolean;
}

export interface ImageBenchResult {
  runs: number;
  size: number;
  /** Median seconds. */
  domuS: number;
  mke2fsS: number;
  /** bare mke2fs followed by sha256sum; NaN when not measured. */
  mke2fsSumS: number;
  /** domu / bare mke2fs (the target is ≤ 1.5). */
  ratio: number;
  /** domu / (mke2fs + sha256sum). */
  sumRatio: number;
  /** Medians of the stage's phases (seconds): checks before writing, mke2fs -d + debugfs, e2fsck + dumpe2fs + sha256. */
  phases: { prepare: number; populate: number; checkAndHash: number };
  samples: { domu: number[]; mke2fs: number[]; mke2fsSum: number[] };
}


/** A logger that notes when the stage's phase lines appear. */
function phaseLogger(marks: Map<string, number>): Logger {
  const base = memoryLogger();
  const note = (m: string) => {
    if (m.startsWith('populating ')) marks.set('populate', performance.now());
    if (m.startsWith('checking ')) marks.set('check', performance.now());
  };
  return { ...base, info: (m) => (note(m), base.info(m)), child: () => phaseLogger(marks) };
}

function stageContext(workDir: string, log: Logger, signal: AbortSignal): StageContext {
  return { workDir, log, signal, cleanup: new CleanupRegistry(), cache: new Cache(join(workDir, 'cache')), progress: () => {} };
}

async function bareMke2fs(env: ExecEnv, staging: string, file: string, size: number): Promise<void> {
  const fh = await open(file, 'wx');
  await fh.truncate(size);
  await fh.close();
  await run(env, 'mke2fs', ['-q', '-t', 'ext4', '-F', '-d', staging, file]);
}

export async function benchImage(staging: string, runs = 5, opts: ImageBenchOptions = {}): Promise<ImageBenchResult> {
  const size = opts.size ?? 2 ** 30;
  const print = opts.print ?? true;
  const withSum = opts.withChecksumBaseline ?? true;
  const signal = new AbortController().signal;
  const env: ExecEnv = { log: memoryLogger(), signal };
  const base = await mkdtemp(join(opts.dir ?? tmpdir(), 'domu-bench-image-'));
  const samples = { domu: [] as number[], mke2fs: [] as number[], mke2fsSum: [] as number[] };
  const phases = { prepare: [] as number[], populate: [] as number[], checkAndHash: [] as number[] };
  let n = 0;
  const domu = async () => {
    const marks = new Map<string, number>();
    const ctx = stageContext(join(base, 'work'), phaseLogger(marks), signal);
    const t0 = performance.now();
    await imageStage(
      { staging, devices: [{ path: '/dev/console', type: 'c', mode: 0o600, uid: 0, gid: 0, major: 5, minor: 1 }], output: join(base, `domu-${n++}.img`), size, label: 'busybox', populate: 'rootless', sourceDateEpoch: 1700000000, contentHash: 'ab'.repeat(32) },
      ctx,
    );
    const t1 = performance.now();
    const p = marks.get('populate') ?? t0;
    const c = marks.get('check') ?? t1;
    return { prepare: (p - t0) / 1000, populate: (c - p) / 1000, checkAndHash: (t1 - c) / 1000 };
  };
  try {
    // One untimed round of each: page cache, JIT and the stage's one-time mke2fs -V.
    await domu();
    await bareMke2fs(env, staging, join(base, 'warm.img'), size);
    for (let i = 0; i < runs; i++) {
      let ph = { prepare: 0, populate: 0, checkAndHash: 0 };
      samples.domu.push(await timed(env, async () => (ph = await domu())));
      phases.prepare.push(ph.prepare);
      phases.populate.push(ph.populate);
      phases.checkAndHash.push(ph.checkAndHash);
      samples.mke2fs.push(await timed(env, () => bareMke2fs(env, staging, join(base, `bare-${i}.img`), size)));
      if (withSum) {
        const f = join(base, `sum-${i}.img`);
        samples.mke2fsSum.push(await timed(env, async () => {
          await bareMke2fs(env, staging, f, size);
          await run(env, 'sha256sum', [f]);
        }));
      }
      if (print) {
        const f = (xs: number[]) => (xs.length > i ? xs[i]!.toFixed(3) : '-');
        console.log(`run ${i + 1}/${runs}: domu ${f(samples.domu)} s (populate ${ph.populate.toFixed(3)}, check+hash ${ph.checkAndHash.toFixed(3)}), mke2fs ${f(samples.mke2fs)} s, mke2fs+sha256sum ${f(samples.mke2fsSum)} s`);
      }
    }
  } finally {
    await rm(base, { recursive: true, force: true });
  }
  const domuS = median(samples.domu);
  const mke2fsS = median(samples.mke2fs);
  const mke2fsSumS = withSum ? median(samples.mke2fsSum) : Number.NaN;
  return {
    runs,
    size,
    domuS,
    mke2fsS,
    mke2fsSumS,
    ratio: domuS / mke2fsS,
    sumRatio: domuS / mke2fsSumS,
    phases: { prepare: median(phases.prepare), populate: median(phases.populate), checkAndHash: median(phases.checkAndHash) },
    samples,
  };
}

/** Print the image benchmark for `staging` (default: a busybox-like tree made for the run). */
export async function reportImageBench(stagingDir?: string): Promise<void> {
  let staging = stagingDir;
  let scratch: string | undefined;
  if (!staging) {
    scratch = await mkdtemp(join(tmpdir(), 'domu-bench-tree-'));
    staging = await busyboxLikeTree(join(scratch, 'staging'));
  }
  try {
    const runs = Number(process.env.BENCH_RUNS ?? 5);
    console.log(`image: ${staging}, 1 GiB sparse, ${runs} runs each`);
    const r = await benchImage(staging, runs, process.env.BENCH_DIR ? { dir: process.env.BENCH_DIR } : {});
    const row = (name: string, s: number, ratio: number) => `| ${name.padEnd(34)} | ${s.toFixed(3).padStart(8)} | ${Number.isFinite(ratio) ? ratio.toFixed(2).padStart(8) : '       -'} |`;
    console.log('');
    console.log(`| ${'image (1 GiB, busybox-like tree)'.padEnd(34)} | median s | vs mke2fs |`);
    console.log(`| ${'-'.repeat(34)} | -------- | -------- |`);
    console.log(row('mke2fs -d (bare)', r.mke2fsS, 1));
    console.log(row('mke2fs -d + sha256sum', r.mke2fsSumS, r.mke2fsSumS / r.mke2fsS));
    console.log(row('domu image stage', r.domuS, r.ratio));
    console.log(`  stage phases (median s): checks ${r.phases.prepare.toFixed(3)}, mke2fs -d + debugfs ${r.phases.populate.toFixed(3)}, e2fsck + dumpe2fs + sha256 ${r.phases.checkAndHash.toFixed(3)}`);
    console.log(`target: domu <= 1.50 x bare mke2fs: ${r.ratio <= 1.5 ? 'met' : 'NOT met'} (${r.ratio.toFixed(2)}); vs mke2fs + sha256sum: ${r.sumRatio.toFixed(2)}\n`);
  } finally {
    if (scratch) await rm(scratch, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  reportImageBench(process.argv[2]).catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
