// Benchmark: domu from tarball to install tree (source → extract → kconfig → compile, empty
// cache but the tarball given with --source) against bench/baseline-compile.sh doing the same
// steps by hand; and a cached rebuild of the same stages. Target ratios: cold ≤ 1.05, cached ≤ 0.5 s.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type ExecEnv } from '../src/core/exec.js';
import { median, timed } from './stats.js';
import { memoryLogger } from '../src/core/log.js';
import { projectPath } from '../src/core/paths.js';
import { COMPAT_HEADER } from '../src/pipeline/plan.js';

export interface CompileBenchResult {
  runs: number;
  domuS: number;
  shellS: number;
  ratio: number;
  cachedS: number;
  samples: { domu: number[]; shell: number[]; cached: number[] };
}



export async function benchCompile(tarball: string, version: string, runs = 3, cachedRuns = 5): Promise<CompileBenchResult> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const base = await mkdtemp(join(tmpdir(), 'domu-bench-compile-'));
  const domu = projectPath('bin', 'domu.js');
  const domuArgs = (cache: string) => [domu, 'build', '--json', '--until', 'compile', '--cache-dir', cache, '--busybox-version', version, '--source', tarball, '--jobs', '2'];
  const samples = { domu: [] as number[], shell: [] as number[], cached: [] as number[] };
  let lastCache = '';
  try {
    for (let i = 0; i < runs; i++) {
      const cache = join(base, `cache-${i}`);
      const work = join(base, `shell-${i}`);
      samples.domu.push(await timed(env, () => run(env, process.execPath, domuArgs(cache), { quiet: true })));
      samples.shell.push(await timed(env, () => run(env, projectPath('bench', 'baseline-compile.sh'), [tarball, work, COMPAT_HEADER], { quiet: true })));
      console.log(`run ${i + 1}/${runs}: domu ${samples.domu.at(-1)!.toFixed(1)} s, shell ${samples.shell.at(-1)!.toFixed(1)} s`);
      if (lastCache) await rm(lastCache, { recursive: true, force: true });
      await rm(work, { recursive: true, force: true });
      lastCache = cache;
    }
    for (let i = 0; i < cachedRuns; i++) {
      samples.cached.push(await timed(env, () => run(env, process.execPath, domuArgs(lastCache), { quiet: true })));
    }
    console.log(`cached rebuilds: ${samples.cached.map((s) => s.toFixed(3)).join(', ')} s`);
  } finally {
    await rm(base, { recursive: true, force: true });
  }
  const domuS = median(samples.domu);
  const shellS = median(samples.shell);
  return { runs, domuS, shellS, ratio: domuS / shellS, cachedS: median(samples.cached), samples };
}
