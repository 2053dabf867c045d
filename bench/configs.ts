// Benchmark (issue 6): `domu configs` for generated inventories of 10, 1,000 and 10,000 hosts,
// as a user runs it (a fresh process of the compiled CLI: load + validate the description,
// resolve the kernel, render and write every file into a fresh --out). Targets: 1,000 hosts
// ≤ 1 s; time per host flat (10,000 ≤ 12 × the 1,000 time). Medians of BENCH_RUNS (default 3).
// BENCH_DIR=/dev/shm takes the disk out (every host costs 2 directories and 3 files).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, type ExecEnv } from '../src/core/exec.js';
import { memoryLogger } from '../src/core/log.js';
import { PROJECT_ROOT } from '../src/core/paths.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median } from './stats.js';

export const HOST_COUNTS = [10, 1000, 10000];

/** A description with `n` Dom0s on 10.0.0.0/8 (unique names, addresses and NIC MACs). */
export function inventory(n: number, kernelImage: string): string {
  const lines = [`kernel:\n  image: ${kernelImage}\n`, 'hosts:\n'];
  for (let i = 0; i < n; i++) {
    const a = i + 1;
    const addr = `10.${(a >> 16) & 255}.${(a >> 8) & 255}.${a & 255}`;
    const mac = `08:00:27:${((a >> 16) & 255).toString(16).padStart(2, '0')}:${((a >> 8) & 255).toString(16).padStart(2, '0')}:${(a & 255).toString(16).padStart(2, '0')}`;
    lines.push(`  - { name: dom0-${String(a).padStart(5, '0')}, address: ${addr}, bridge: xenbr0, hwaddr: "${mac}" }\n`);
  }
  return lines.join('');
}

export interface ConfigsBenchResult {
  hosts: number;
  seconds: number;
  files: number;
}

export async function benchConfigs(runs = Number(process.env.BENCH_RUNS ?? 3)): Promise<ConfigsBenchResult[]> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const kernel = await getKernelPackage();
  const dir = await mkdtemp(join(process.env.BENCH_DIR ?? tmpdir(), 'domu-bench-configs-'));
  const cli = join(PROJECT_ROOT, 'bin', 'domu.js');
  try {
    await run(env, 'npm', ['run', '-s', 'build'], { cwd: PROJECT_ROOT });
    const out: ConfigsBenchResult[] = [];
    for (const n of HOST_COUNTS) {
      const config = join(dir, `guest-${n}.yaml`);
      await writeFile(config, inventory(n, kernel.image));
      const times: number[] = [];
      let files = 0;
      for (let i = 0; i <= runs; i++) {
        const outDir = join(dir, `out-${n}-${i}`);
        await run(env, 'sync', []);
        const t = performance.now();
        const r = await run(env, process.execPath, [cli, 'configs', '--json', '--config', config, '--out', outDir, '--cache-dir', join(dir, 'cache')], { quiet: true });
        const s = (performance.now() - t) / 1000;
        files = (JSON.parse(r.stdout) as { configs: { files: string[] } }).configs.files.length;
        // Output trees are deleted only at the end: on this VM's disk (mounted with discard),
        // deleting thousands of files makes the next creations several times slower.
        if (i > 0) times.push(s); // the first run warms the page cache and the kernel memo
      }
      out.push({ hosts: n, seconds: median(times), files });
    }
    return out;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function reportConfigsBench(): Promise<void> {
  const r = await benchConfigs();
  console.log('');
  console.log(`| ${'domu configs'.padEnd(14)} | files  | median s | ms/host |`);
  console.log(`| ${'-'.repeat(14)} | ------ | -------- | ------- |`);
  for (const x of r) console.log(`| ${`${x.hosts} hosts`.padEnd(14)} | ${String(x.files).padStart(6)} | ${x.seconds.toFixed(3).padStart(8)} | ${((x.seconds * 1000) / x.hosts).toFixed(3).padStart(7)} |`);
  const k1 = r.find((x) => x.hosts === 1000)!;
  const k10 = r.find((x) => x.hosts === 10000)!;
  const ratio = k10.seconds / k1.seconds;
  console.log(`target: 1,000 hosts <= 1 s: ${k1.seconds <= 1 ? 'met' : 'NOT met'} (${k1.seconds.toFixed(3)} s); 10,000 <= 12 x 1,000: ${ratio <= 12 ? 'met' : 'NOT met'} (${ratio.toFixed(2)} x)\n`);
}
