// Benchmark (issue 14, item 5): start-up of the compiled CLI, medians of fresh processes:
//   domu --version, domu --help   ≤ 0.15 s
//   no-op domu build              ≤ 0.6 s   (busybox 1.35.0, everything cached, out/ up to date)
//   no-op domu configs (2 hosts)  ≤ 0.4 s   (the default guest.yaml's two hosts, out/ up to date)
// The builds use the Debian kernel of the shared test cache and the busybox 1.35.0 tarball. The
// cache is BENCH_CACHE when set (kept, so that only the first run ever compiles busybox), else a
// fresh one under the temp directory. BENCH_RUNS (default 10) processes each.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type ExecEnv } from '../src/core/exec.js';
import { memoryLogger } from '../src/core/log.js';
import { projectPath } from '../src/core/paths.js';
import { getBusyboxTarball } from '../test/helpers/busybox-tarball.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median } from './stats.js';

export interface StartupRow {
  name: string;
  seconds: number;
  target: number;
}

/** Measured before the lazy CLI (commit 6d58d4f, medians of 10, this 2-core machine under load). */
const BEFORE: Record<string, number> = { 'domu --version': 0.613, 'domu --help': 0.666, 'no-op domu build': 1.803, 'no-op domu configs (2 hosts)': 0.6 };

export async function benchStartup(runs = Number(process.env.BENCH_RUNS ?? 10)): Promise<StartupRow[]> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const [tarball, kernel] = await Promise.all([getBusyboxTarball(), getKernelPackage()]);
  const base = await mkdtemp(join(tmpdir(), 'domu-bench-startup-'));
  const cache = process.env.BENCH_CACHE ?? join(base, 'cache');
  const cli = projectPath('bin', 'domu.js');
  // The project's own guest.yaml (two hosts), its kernel replaced by the test cache's.
  const common = ['--json', '--cache-dir', cache, '--set', `kernel.image=${kernel.image}`];
  const build = ['build', ...common, '--out', join(base, 'out-build'), '--source', tarball, '--busybox-version', '1.35.0'];
  const configs = ['configs', ...common, '--out', join(base, 'out-configs')];
  const cases: [string, string[], number][] = [
    ['node -e 0 (the floor)', ['-e', '0'], Number.NaN],
    ['domu --version', ['--version'], 0.15],
    ['domu --help', ['--help'], 0.15],
    ['no-op domu build', build, 0.6],
    ['no-op domu configs (2 hosts)', configs, 0.4],
  ];
  try {
    await run(env, 'npm', ['run', '-s', 'build'], { cwd: projectPath() });
    const domu = (args: string[]) => run(env, process.execPath, args[0] === '-e' ? args : [cli, ...args], { cwd: projectPath(), quiet: true, timeoutMs: 3_600_000 });
    await domu(build); // the first build fills the cache and out/; the ones measured are no-ops
    await domu(configs);
    const rows: StartupRow[] = [];
    for (const [name, args, target] of cases) {
      const times: number[] = [];
      for (let i = 0; i < runs; i++) {
        const t = performance.now();
        await domu(args);
        times.push((performance.now() - t) / 1000);
      }
      rows.push({ name, seconds: median(times), target });
    }
    return rows;
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

export async function reportStartupBench(): Promise<void> {
  const rows = await benchStartup();
  console.log('');
  console.log(`| ${'start-up (fresh processes)'.padEnd(30)} | before s | median s | target s | verdict |`);
  console.log(`| ${'-'.repeat(30)} | -------- | -------- | -------- | ------- |`);
  for (const r of rows) {
    const before = BEFORE[r.name];
    console.log(`| ${r.name.padEnd(30)} | ${(before === undefined ? '-' : before.toFixed(3)).padStart(8)} | ${r.seconds.toFixed(3).padStart(8)} | ${(Number.isNaN(r.target) ? '-' : r.target.toFixed(2)).padStart(8)} | ${(Number.isNaN(r.target) ? '' : r.seconds <= r.target ? 'met' : 'NOT met').padEnd(7)} |`);
  }
  console.log('');
}
