// Benchmark (issue 5): the closure of [xen-netfront, xen-blkfront, ext4] on the full Debian
// package tree (about 4000 modules, no modules.dep), cold (no index: every .modinfo is read) and
// warm (the index read back from the cache), against kmod as the anchor:
// `modprobe --show-depends -d <root> -S <release>` on a copy where `depmod` has run (the
// depmod run is timed separately: it is what kmod needs before it can answer at all).
// Runs alternate; medians of BENCH_RUNS (default 5). In-process, after one warm-up round.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { moduleClosure } from '../src/kernel/closure.js';
import { run, type ExecEnv } from '../src/core/exec.js';
import { memoryLogger } from '../src/core/log.js';
import { indexModules } from '../src/kernel/modindex.js';
import { readModinfo } from '../src/kernel/modinfo.js';
import { Cache } from '../src/core/cache.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median } from './stats.js';

export const CLOSURE_NAMES = ['xen-netfront', 'xen-blkfront', 'ext4'];

export interface ClosureBenchResult {
  modules: number;
  closure: string[];
  coldS: number;
  warmS: number;
  modprobeS: number;
  depmodS: number;
}

const seconds = async (f: () => Promise<unknown>): Promise<number> => {
  const t = performance.now();
  await f();
  return (performance.now() - t) / 1000;
};

export async function benchClosure(runs = Number(process.env.BENCH_RUNS ?? 5)): Promise<ClosureBenchResult> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const kernel = await getKernelPackage();
  const dir = await mkdtemp(join(tmpdir(), 'domu-bench-closure-'));
  try {
    // kmod's copy: hard links of the package's modules, then depmod.
    const root = join(dir, 'kmod');
    await run(env, 'mkdir', ['-p', join(root, 'lib', 'modules')]);
    await run(env, 'cp', ['-al', kernel.modules, join(root, 'lib', 'modules')]);
    const depmodTimes: number[] = [];
    const modprobeTimes: number[] = [];
    const coldTimes: number[] = [];
    const warmTimes: number[] = [];
    let closure: string[] = [];
    let count = 0;

    const ours = async (cache: Cache) => {
      const index = await indexModules(kernel.modules, { cache, env });
      count = index.paths.size;
      const c = await moduleClosure(index, CLOSURE_NAMES, { readInfo: (f) => readModinfo(f, env) });
      closure = c.modules.map((m) => m.name);
    };
    for (let i = 0; i <= runs; i++) {
      const cache = new Cache(join(dir, `cache-${i}`));
      const cold = await seconds(() => ours(cache));
      const warm = await seconds(() => ours(cache));
      const depmod = await seconds(() => run(env, 'depmod', ['-b', root, kernel.release]));
      const modprobe = await seconds(() => run(env, 'modprobe', ['--show-depends', '-d', root, '-S', kernel.release, '-a', ...CLOSURE_NAMES]));
      if (i === 0) continue; // warm-up round
      coldTimes.push(cold);
      warmTimes.push(warm);
      depmodTimes.push(depmod);
      modprobeTimes.push(modprobe);
    }
    return { modules: count, closure, coldS: median(coldTimes), warmS: median(warmTimes), modprobeS: median(modprobeTimes), depmodS: median(depmodTimes) };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function reportClosureBench(): Promise<void> {
  const r = await benchClosure();
  const row = (name: string, s: number, note = '') => `| ${name.padEnd(40)} | ${s.toFixed(3).padStart(8)} | ${note}`;
  console.log(`closure of [${CLOSURE_NAMES.join(', ')}] on ${r.modules} modules → ${r.closure.length} modules: ${r.closure.join(' ')}`);
  console.log('');
  console.log(`| ${'closure'.padEnd(40)} | median s |`);
  console.log(`| ${'-'.repeat(40)} | -------- |`);
  console.log(row('modprobe --show-depends (after depmod)', r.modprobeS, '(anchor)'));
  console.log(row('depmod -b (what kmod needs first)', r.depmodS));
  console.log(row('domu cold (no index)', r.coldS, `${(r.coldS / r.modprobeS).toFixed(0)} x modprobe; ${(r.coldS / (r.depmodS + r.modprobeS)).toFixed(2)} x depmod+modprobe`));
  console.log(row('domu warm (index cached)', r.warmS, `${(r.warmS / r.modprobeS).toFixed(0)} x modprobe`));
  console.log(`target: cold <= 2 s: ${r.coldS <= 2 ? 'met' : 'NOT met'} (${r.coldS.toFixed(3)} s); warm <= 0.2 s: ${r.warmS <= 0.2 ? 'met' : 'NOT met'} (${r.warmS.toFixed(3)} s)\n`);
}
