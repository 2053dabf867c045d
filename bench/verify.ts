// Benchmark (issue 7): `domu verify` of a real build (busybox 1.35.0 and Debian's kernel, built
// with the shared test caches), as a user runs it: a fresh CLI process each time. Reports the
// medians of BENCH_RUNS (default 3) for the time from QEMU's start to the guest's ready marker,
// the whole check (marker, console shell, applets, modules, power-off), and the command's wall
// time (which also holds the accelerator choice: cached after the first probe).
//
//   node --import tsx bench/verify.ts
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { VerifyOutput } from '../src/stages/verify.js';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../test/helpers/busybox-tarball.js';
import { domuJson, stage } from '../test/helpers/cli.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median } from './stats.js';

export interface VerifyBenchResult {
  runs: number;
  accel: string;
  accelReason: string;
  /** Medians, seconds. */
  toMarkerS: number;
  checkS: number;
  wallS: number;
  samples: { toMarker: number[]; check: number[]; wall: number[] };
}

export async function benchVerify(tarball: string, runs = Number(process.env.BENCH_RUNS ?? 3)): Promise<VerifyBenchResult> {
  const kernel = await getKernelPackage();
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'domu-bench-verify-'));
  try {
    const config = join(dir, 'guest.yaml');
    await writeFile(config, `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernel.image}\n`);
    const out = join(dir, 'out');
    const b = await domuJson(['build', '--json', '--config', config, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out]);
    if (b.r.exitCode !== 0) throw new Error(`the build for the verify benchmark failed:\n${b.r.stderr}`);
    const samples = { toMarker: [] as number[], check: [] as number[], wall: [] as number[] };
    let last: VerifyOutput | undefined;
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      const v = await domuJson(['verify', '--quick', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR]);
      const wall = (performance.now() - t) / 1000;
      if (v.r.exitCode !== 0) throw new Error(`domu verify failed (exit ${v.r.exitCode}):\n${v.r.stderr}`);
      last = stage(v.s, 'verify').outputs as unknown as VerifyOutput;
      samples.toMarker.push(last.secondsToMarker);
      samples.check.push(last.seconds);
      samples.wall.push(wall);
      console.log(`  run ${i + 1}: marker ${last.secondsToMarker.toFixed(2)} s, check ${last.seconds.toFixed(2)} s, command ${wall.toFixed(2)} s (${last.accel})`);
    }
    return {
      runs,
      accel: last!.accel,
      accelReason: last!.accelReason,
      toMarkerS: median(samples.toMarker),
      checkS: median(samples.check),
      wallS: median(samples.wall),
      samples,
    };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function reportVerifyBench(tarball: string): Promise<void> {
  console.log('verify: domu verify of a default build (busybox 1.35.0, Debian kernel), fresh CLI process per run');
  const r = await benchVerify(tarball);
  console.log('');
  console.log(`| ${'domu verify'.padEnd(28)} | median s |`);
  console.log(`| ${'-'.repeat(28)} | -------- |`);
  console.log(`| ${'QEMU start → ready marker'.padEnd(28)} | ${r.toMarkerS.toFixed(2).padStart(8)} |`);
  console.log(`| ${'whole check (to power-off)'.padEnd(28)} | ${r.checkS.toFixed(2).padStart(8)} |`);
  console.log(`| ${'command wall time'.padEnd(28)} | ${r.wallS.toFixed(2).padStart(8)} |`);
  console.log(`accelerator: ${r.accel} (${r.accelReason}); ${r.runs} runs`);
  console.log('target: none named in issue 7 (facts.md: a TCG boot of this kernel and ramdisk reaches a marker in 5–7 s)\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  reportVerifyBench(await getBusyboxTarball()).catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
