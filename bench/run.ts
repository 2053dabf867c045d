// Benchmark runner: `npm run bench` (node --import tsx bench/run.ts [runs]); BENCH_DIR=/dev/shm
// measures on tmpfs instead of the system temp directory.
import { getBusyboxTarball } from '../test/helpers/busybox-tarball.js';
import { benchExtract } from './extract.js';

async function main(): Promise<void> {
  const runs = Number(process.argv[2] ?? process.env.BENCH_RUNS ?? 5);
  const dir = process.env.BENCH_DIR; // e.g. /dev/shm, to take the disk out of the comparison
  const tarball = await getBusyboxTarball();
  console.log(`extract: ${tarball}, ${runs} runs each, fresh directories${dir ? ` under ${dir}` : ''}`);
  const r = await benchExtract(tarball, runs, dir ? { dir } : {});
  const row = (name: string, s: number, ratio: number) =>
    `| ${name.padEnd(28)} | ${s.toFixed(3).padStart(8)} | ${Number.isFinite(ratio) ? ratio.toFixed(2).padStart(8) : '       -'} |`;
  console.log('');
  console.log(`| ${'extract busybox-1.35.0'.padEnd(28)} | median s | vs tar   |`);
  console.log(`| ${'-'.repeat(28)} | -------- | -------- |`);
  console.log(row('tar xjf', r.tarS, 1));
  console.log(row('domu (bzip2 child)', r.nativeS, r.ratio));
  console.log(row('domu (unbzip2-stream)', r.jsS, r.jsRatio));
  console.log('');
  console.log(`target: domu (bzip2 child) <= 1.30 x tar xjf: ${r.ratio <= 1.3 ? 'met' : 'NOT met'} (${r.ratio.toFixed(2)})`);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
