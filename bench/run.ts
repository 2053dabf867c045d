// Benchmark runner: `npm run bench` (node --import tsx bench/run.ts [extract|compile|image|closure|configs|build|release|verify|busybox-1.22.1|startup|xen|lab ...]).
// BENCH_RUNS sets the number of extraction runs; BENCH_DIR=/dev/shm measures extraction on tmpfs.
// Each benchmark prints its figures and a verdict against the target named in its issue.
import { getBusyboxTarball } from '../test/helpers/busybox-tarball.js';
import { benchCompile } from './compile.js';
import { benchExtract } from './extract.js';
import { reportImageBench } from './image.js';
import { reportClosureBench } from './closure.js';
import { reportConfigsBench } from './configs.js';
import { reportBuildBench } from './build.js';
import { reportVerifyBench } from './verify.js';
import { reportReleaseBench } from './release.js';
import { reportBusybox1221Bench } from './busybox-1.22.1.js';
import { reportStartupBench } from './startup.js';
import { reportXenBench } from './xen.js';
import { reportLabBench } from './lab.js';

const row = (name: string, s: number, ratio: number) =>
  `| ${name.padEnd(28)} | ${s.toFixed(3).padStart(8)} | ${Number.isFinite(ratio) ? ratio.toFixed(2).padStart(8) : '       -'} |`;

async function extract(tarball: string): Promise<void> {
  const runs = Number(process.env.BENCH_RUNS ?? 5);
  const dir = process.env.BENCH_DIR; // e.g. /dev/shm, to take the disk out of the comparison
  console.log(`extract: ${tarball}, ${runs} runs each, fresh directories${dir ? ` under ${dir}` : ''}`);
  const r = await benchExtract(tarball, runs, dir ? { dir } : {});
  console.log('');
  console.log(`| ${'extract busybox-1.35.0'.padEnd(28)} | median s | vs tar   |`);
  console.log(`| ${'-'.repeat(28)} | -------- | -------- |`);
  console.log(row('tar xjf', r.tarS, 1));
  console.log(row('domu (bzip2 child)', r.nativeS, r.ratio));
  console.log(row('domu (unbzip2-stream)', r.jsS, r.jsRatio));
  console.log(`target: domu (bzip2 child) <= 1.30 x tar xjf: ${r.ratio <= 1.3 ? 'met' : 'NOT met'} (${r.ratio.toFixed(2)})\n`);
}

async function compile(tarball: string): Promise<void> {
  console.log(`compile: busybox 1.35.0 from ${tarball}, make -j2`);
  const r = await benchCompile(tarball, '1.35.0');
  console.log('');
  console.log(`| ${'tarball → install tree'.padEnd(28)} | median s | vs shell |`);
  console.log(`| ${'-'.repeat(28)} | -------- | -------- |`);
  console.log(row('shell script (by hand)', r.shellS, 1));
  console.log(row('domu build (cold)', r.domuS, r.ratio));
  console.log(row('domu build (cached)', r.cachedS, Number.NaN));
  console.log(`target: cold <= 1.05 x shell: ${r.ratio <= 1.05 ? 'met' : 'NOT met'} (${r.ratio.toFixed(3)}); cached <= 0.5 s: ${r.cachedS <= 0.5 ? 'met' : 'NOT met'} (${r.cachedS.toFixed(3)} s)\n`);
}

const BENCHES: Record<string, (tarball: string) => Promise<void>> = { extract, compile, image: () => reportImageBench(), closure: () => reportClosureBench(), configs: () => reportConfigsBench(), build: () => reportBuildBench(), release: () => reportReleaseBench(), verify: (tarball) => reportVerifyBench(tarball), 'busybox-1.22.1': () => reportBusybox1221Bench(), startup: () => reportStartupBench(), xen: () => reportXenBench(), lab: () => reportLabBench() };

async function main(): Promise<void> {
  const wanted = process.argv.slice(2).filter((a) => a in BENCHES);
  const tarball = await getBusyboxTarball();
  for (const name of wanted.length ? wanted : Object.keys(BENCHES)) await BENCHES[name]!(tarball);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exitCode = 1;
});
