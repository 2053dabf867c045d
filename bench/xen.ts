// Benchmark (issue 15): `domu verify` on real Xen nested in QEMU (TCG), as a user runs it: a fresh
// CLI process each time, on a build of the default guest (busybox 1.35.0, Debian's kernel, the
// shared test caches). Medians per phase; one cold run (a fresh cache: Debian's Xen packages,
// the dom0 kernel and ramdisk made anew) and BENCH_RUNS warm ones (default 3).
//
//   npm run bench -- xen
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../test/helpers/busybox-tarball.js';
import { domuJson, stage, type Summary } from '../test/helpers/cli.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median } from './stats.js';

/** Seconds per phase of one run, as its JSON summary reports them. */
interface Phases {
  initramfs: number;
  dom0Ready: number;
  toMarker: number;
  migration: number;
  pause: number;
  whole: number;
}

/** Targets of issue 15, warm cache, this 2-core machine under TCG. */
const TARGETS: Record<keyof Phases, number | undefined> = { initramfs: 1, dom0Ready: 15, toMarker: 30, migration: 20, pause: undefined, whole: 120 };
const LABELS: Record<keyof Phases, string> = {
  initramfs: 'dom0 ramdisk (from cache)',
  dom0Ready: 'Xen start → dom0 ready',
  toMarker: 'xl create → ready marker',
  migration: 'live migration',
  pause: 'guest pause',
  whole: 'whole domu verify',
};

function phasesOf(s: Summary, wall: number): Phases {
  const o = (name: string) => stage(s, name).outputs as Record<string, number>;
  const ramdisk = (stage(s, 'xen').outputs as { dom0Initramfs: { seconds: number } }).dom0Initramfs;
  return { initramfs: ramdisk.seconds, dom0Ready: o('dom0').readySeconds!, toMarker: o('guest').markerSeconds!, migration: o('move').seconds!, pause: o('move').pauseSeconds!, whole: wall };
}

async function once(out: string, cache: string): Promise<Phases> {
  const t = performance.now();
  const v = await domuJson(['verify', '--json', '--out', out, '--cache-dir', cache]);
  const wall = (performance.now() - t) / 1000;
  if (v.r.exitCode !== 0) throw new Error(`domu verify failed (exit ${v.r.exitCode}):\n${v.r.stderr}`);
  const p = phasesOf(v.s, wall);
  console.log(`  ${Object.entries(p).map(([k, x]) => `${k} ${x.toFixed(2)}`).join(', ')}`);
  return p;
}

export async function reportXenBench(): Promise<void> {
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  const kernel = await getKernelPackage();
  const tarball = await getBusyboxTarball();
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'domu-bench-xen-'));
  try {
    const config = join(dir, 'guest.yaml');
    await writeFile(config, `busybox:\n  version: 1.35.0\nkernel:\n  package: ${kernel.package}\n`);
    const out = join(dir, 'out');
    const b = await domuJson(['build', '--json', '--config', config, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out]);
    if (b.r.exitCode !== 0) throw new Error(`the build for the xen benchmark failed:\n${b.r.stderr}`);
    console.log(`xen: domu verify of a default build on Debian's Xen in QEMU (TCG); 1 cold run, ${runs} warm`);
    // Cold: an empty cache, so Xen, the dom0 kernel and its ramdisk are fetched and made as on a
    // new machine.
    const cold = join(dir, 'cold-cache');
    console.log(' cold:');
    const c = await once(out, cold);
    await rm(cold, { recursive: true, force: true });
    console.log(' warm:');
    await once(out, TEST_CACHE_DIR); // fills the shared cache, not counted
    const warm: Phases[] = [];
    for (let i = 0; i < runs; i++) warm.push(await once(out, TEST_CACHE_DIR));
    console.log('');
    console.log(`| ${'phase'.padEnd(28)} | cold s   | warm s   | target   |`);
    console.log(`| ${'-'.repeat(28)} | -------- | -------- | -------- |`);
    const verdicts: string[] = [];
    for (const k of Object.keys(LABELS) as (keyof Phases)[]) {
      const w = median(warm.map((p) => p[k]));
      const target = TARGETS[k];
      console.log(`| ${LABELS[k].padEnd(28)} | ${c[k].toFixed(2).padStart(8)} | ${w.toFixed(2).padStart(8)} | ${target === undefined ? '       -' : `≤ ${target}`.padStart(8)} |`);
      if (target !== undefined) verdicts.push(`${LABELS[k]} ${w <= target ? 'met' : 'NOT met'} (${w.toFixed(2)} s)`);
    }
    console.log(`targets (warm medians of ${runs}): ${verdicts.join('; ')}\n`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
