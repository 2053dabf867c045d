// Benchmark (issue 7): the whole `domu build`, as a user runs it (a fresh process of the compiled
// CLI), on the same inputs as bench/baseline-build.sh (the busybox tarball, Debian's kernel tree
// from the shared test cache, rootfs-skel):
//   cold      empty cache vs the shell script doing the same work by hand (the floor): ≤ 1.05
//   no-op     a second build with nothing changed: ≤ 2% of the cold build and < 1.5 s
//   skel-only one file of the skel changed vs bare `mke2fs -d` of the same tree: ≤ 1.5
// BENCH_RUNS (default 2) cold runs; 5 no-op and skel-only runs; medians.
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type ExecEnv } from '../src/core/exec.js';
import { memoryLogger } from '../src/core/log.js';
import { projectPath } from '../src/core/paths.js';
import { COMPAT_HEADER } from '../src/pipeline/plan.js';
import { getBusyboxTarball } from '../test/helpers/busybox-tarball.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median, timed } from './stats.js';

export interface BuildBenchResult {
  coldS: number;
  shellS: number;
  noopS: number;
  skelS: number;
  mke2fsS: number;
}

export async function benchBuild(runs = Number(process.env.BENCH_RUNS ?? 2)): Promise<BuildBenchResult> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const [tarball, kernel] = await Promise.all([getBusyboxTarball(), getKernelPackage()]);
  const base = await mkdtemp(join(tmpdir(), 'domu-bench-build-'));
  const cli = projectPath('bin', 'domu.js');
  try {
    await run(env, 'npm', ['run', '-s', 'build'], { cwd: projectPath() });
    // A private copy of the skel, so the skel-only runs can change it.
    await cp(projectPath('rootfs-skel'), join(base, 'rootfs-skel'), { recursive: true });
    await cp(projectPath('rootfs-devices.txt'), join(base, 'rootfs-devices.txt'));
    const config = join(base, 'guest.yaml');
    await writeFile(config, `busybox:\n  version: 1.35.0\nimage:\n  skel: rootfs-skel\nkernel:\n  image: ${kernel.image}\n`);
    const domu = (cache: string, out: string) => run(env, process.execPath, [cli, 'build', '--json', '--config', config, '--cache-dir', cache, '--source', tarball, '--jobs', '2', '--out', out], { quiet: true, timeoutMs: 1_800_000 });

    const cold: number[] = [];
    const shell: number[] = [];
    let cache = '';
    let out = '';
    for (let i = 0; i < runs; i++) {
      cache = join(base, `cache-${i}`);
      out = join(base, `out-${i}`);
      cold.push(await timed(env, () => domu(cache, out)));
      const work = join(base, `shell-${i}`);
      shell.push(await timed(env, () => run(env, projectPath('bench', 'baseline-build.sh'), [tarball, work, COMPAT_HEADER, kernel.modules, join(base, 'rootfs-skel')], { quiet: true, timeoutMs: 1_800_000 })));
      console.log(`cold run ${i + 1}/${runs}: domu ${cold.at(-1)!.toFixed(1)} s, shell ${shell.at(-1)!.toFixed(1)} s`);
    }

    const noop: number[] = [];
    for (let i = 0; i < 5; i++) noop.push(await timed(env, () => domu(cache, out)));
    const skel: number[] = [];
    const bare: number[] = [];
    const staging = join(base, `shell-${runs - 1}`, 'rootfs');
    for (let i = 0; i < 5; i++) {
      await writeFile(join(base, 'rootfs-skel', 'etc', 'motd'), `build ${i}\n`);
      skel.push(await timed(env, () => domu(cache, out)));
      const img = join(base, `bare-${i}.img`);
      bare.push(
        await timed(env, async () => {
          await run(env, 'truncate', ['-s', '1G', img]);
          await run(env, 'mke2fs', ['-q', '-t', 'ext4', '-d', staging, img]);
        }),
      );
    }
    console.log(`no-op: ${noop.map((s) => s.toFixed(2)).join(', ')} s; skel-only: ${skel.map((s) => s.toFixed(2)).join(', ')} s; mke2fs -d: ${bare.map((s) => s.toFixed(3)).join(', ')} s`);
    return { coldS: median(cold), shellS: median(shell), noopS: median(noop), skelS: median(skel), mke2fsS: median(bare) };
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

export async function reportBuildBench(): Promise<void> {
  const r = await benchBuild();
  const row = (name: string, s: number, note: string) => `| ${name.padEnd(34)} | ${s.toFixed(3).padStart(8)} | ${note}`;
  console.log('');
  console.log(`| ${'domu build (busybox 1.35.0)'.padEnd(34)} | median s |`);
  console.log(`| ${'-'.repeat(34)} | -------- |`);
  console.log(row('shell script (the floor)', r.shellS, ''));
  console.log(row('cold (empty cache)', r.coldS, `${(r.coldS / r.shellS).toFixed(3)} x shell`));
  console.log(row('no-op rebuild', r.noopS, `${((100 * r.noopS) / r.coldS).toFixed(2)} % of cold`));
  console.log(row('bare mke2fs -d of the tree', r.mke2fsS, ''));
  console.log(row('skel-only rebuild', r.skelS, `${(r.skelS / r.mke2fsS).toFixed(1)} x mke2fs -d`));
  console.log(
    `targets: cold <= 1.05 x shell: ${r.coldS / r.shellS <= 1.05 ? 'met' : 'NOT met'}; no-op <= 2 % and < 1.5 s: ${r.noopS <= 0.02 * r.coldS && r.noopS < 1.5 ? 'met' : 'NOT met'}; skel-only <= 1.5 x mke2fs -d: ${r.skelS / r.mke2fsS <= 1.5 ? 'met' : 'NOT met'}\n`,
  );
}
