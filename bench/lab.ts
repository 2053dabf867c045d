// Benchmark (issue 16): `domu lab` as an administrator runs it — a fresh CLI process each time, on a
// build of the default guest with store.disk: lun (busybox 1.35.0, Debian's kernel, the shared
// test cache), warm cache. Medians per phase over BENCH_RUNS runs (default 3), against the issue's
// targets on this 2-core machine under TCG.
//
//   npm run bench -- lab
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../test/helpers/busybox-tarball.js';
import { domuJson, stage, type Summary } from '../test/helpers/cli.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median } from './stats.js';

/** The pipeline stages of a lun lab, then what is measured inside them. */
const STAGES = ['storage', 'test1', 'test2', 'create', 'migrate', 'migrate back', 'disk'] as const;
type Row = Record<string, number>;

/** Targets of issue 16 (warm cache): whole lab, each migration, guest pause. */
const TARGETS: Record<string, number> = { whole: 360, 'migrate: xl migrate': 30, 'migrate back: xl migrate': 30, 'migrate: pause': 10, 'migrate back: pause': 10 };

function rowOf(s: Summary, wall: number): Row {
  const row: Row = {};
  for (const n of STAGES) row[n] = stage(s, n).ms / 1000;
  for (const n of ['migrate', 'migrate back'] as const) {
    const o = stage(s, n).outputs as { seconds: number; pauseSeconds: number };
    row[`${n}: xl migrate`] = o.seconds;
    row[`${n}: pause`] = o.pauseSeconds;
  }
  row['test1: dom0 ready'] = (stage(s, 'test1').outputs as { readySeconds: number }).readySeconds;
  row['create: xl create → marker'] = (stage(s, 'create').outputs as { markerSeconds: number }).markerSeconds;
  row.whole = wall;
  return row;
}

export async function reportLabBench(): Promise<void> {
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const [kernel, tarball] = await Promise.all([getKernelPackage(), getBusyboxTarball()]);
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'domu-bench-lab-'));
  try {
    const config = join(dir, 'guest.yaml');
    await writeFile(config, `busybox:\n  version: 1.35.0\nkernel:\n  package: ${kernel.package}\nstore:\n  disk: lun\n`);
    const out = join(dir, 'out');
    const b = await domuJson(['build', '--json', '--config', config, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out]);
    if (b.r.exitCode !== 0) throw new Error(`the build for the lab benchmark failed:\n${b.r.stderr}`);
    console.log(`lab: domu lab (store.disk: lun, two nested Xen Dom0s, two live migrations) on a warm cache; ${runs} runs`);
    const rows: Row[] = [];
    for (let i = 0; i < runs; i++) {
      const t = performance.now();
      const r = await domuJson(['lab', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR]);
      const wall = (performance.now() - t) / 1000;
      if (r.r.exitCode !== 0) throw new Error(`domu lab failed (exit ${r.r.exitCode}):\n${r.r.stderr}`);
      const row = rowOf(r.s, wall);
      rows.push(row);
      console.log(`  run ${i + 1}: ${Object.entries(row).map(([k, x]) => `${k} ${x.toFixed(1)}`).join(', ')}`);
    }
    console.log('');
    console.log(`| ${'phase'.padEnd(30)} | median s | target   |`);
    console.log(`| ${'-'.repeat(30)} | -------- | -------- |`);
    const verdicts: string[] = [];
    for (const k of Object.keys(rows[0]!)) {
      const m = median(rows.map((r) => r[k]!));
      const target = TARGETS[k];
      console.log(`| ${k.padEnd(30)} | ${m.toFixed(2).padStart(8)} | ${target === undefined ? '       -' : `≤ ${target}`.padStart(8)} |`);
      if (target !== undefined) verdicts.push(`${k} ${m <= target ? 'met' : 'NOT met'} (${m.toFixed(1)} s)`);
    }
    console.log(`targets (medians of ${runs}): ${verdicts.join('; ')}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
