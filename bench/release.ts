// Benchmark: `domu release` of a real build (busybox 1.35.0, the shared test cache), and the
// compression comparison behind IMAGE_COMPRESSION (src/stages/release.ts) on that image.
//
// Compression: each candidate compresses the raw image (one thread) and restores it into a sparse
// file, as a release user would; size, ratio to the apparent and to the allocated bytes, times,
// the restored file's allocation, and whether two compressions gave the same bytes.
// Release: the two stages in-process (check against build.json, write into a fresh dist dir)
// against the same deliverable by hand: sha256sum of the image, zstd -19 -T1, copies of the boot
// files, sha256sum of the result. Runs alternate; `sync` before every timed run.
//
//   node --import tsx bench/release.ts        (BENCH_RUNS, default 3)
import { link, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { run, type ExecEnv } from '../src/core/exec.js';
import { sha256File } from '../src/core/hash.js';
import { memoryLogger } from '../src/core/log.js';
import type { BuildRecord } from '../src/model/buildrecord.js';
import { Cache } from '../src/core/cache.js';
import { CleanupRegistry } from '../src/core/cleanup.js';
import type { StageContext } from '../src/core/context.js';
import { writeRelease } from '../src/stages/release.js';
import { checkBuild } from '../src/stages/release-check.js';
import { IMAGE_COMPRESSION } from '../src/stages/release-format.js';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../test/helpers/busybox-tarball.js';
import { domuJson } from '../test/helpers/cli.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { median, timed } from './stats.js';

interface Candidate {
  label: string;
  tool: 'zstd' | 'xz';
  args: string[];
}

export const CANDIDATES: Candidate[] = [
  { label: 'zstd -3 -T1', tool: 'zstd', args: ['-3', '-T1'] },
  { label: 'zstd -9 -T1', tool: 'zstd', args: ['-9', '-T1'] },
  { label: 'zstd -19 -T1', tool: 'zstd', args: ['-19', '-T1'] },
  { label: 'zstd -19 --long=27 -T1', tool: 'zstd', args: ['-19', '--long=27', '-T1'] },
  { label: 'zstd --ultra -22 --long=27 -T1', tool: 'zstd', args: ['--ultra', '-22', '--long=27', '-T1'] },
  { label: 'xz -6 -T1', tool: 'xz', args: ['-6', '-T1'] },
  { label: 'xz -9 -T1', tool: 'xz', args: ['-9', '-T1'] },
];

export interface CompressionRow {
  label: string;
  bytes: number;
  /** Apparent bytes / compressed bytes, and allocated bytes / compressed bytes. */
  ratio: number;
  allocatedRatio: number;
  /** Median seconds. */
  compressS: number;
  restoreS: number;
  restoredAllocated: number;
  deterministic: boolean;
}

export interface ReleaseBenchResult {
  runs: number;
  apparent: number;
  allocated: number;
  compression: CompressionRow[];
  /** Median seconds: the two stages, their sum, and the deliverable by hand. */
  checkS: number;
  writeS: number;
  releaseS: number;
  byHandS: number;
  identical: boolean;
}

const suffix = (c: Candidate) => (c.tool === 'zstd' ? '.zst' : '.xz');

/** The real guest image: a build into a fresh --out (seconds when the shared cache has the compile). */
async function buildOnce(base: string): Promise<string> {
  const tarball = await getBusyboxTarball();
  const kernel = await getKernelPackage();
  const guest = join(base, 'guest.yaml');
  await writeFile(guest, `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernel.image}\n`);
  const out = join(base, 'out');
  const b = await domuJson(['build', '--json', '--config', guest, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out]);
  if (b.r.exitCode !== 0) throw new Error(`domu build failed (exit ${b.r.exitCode}):\n${b.r.stderr}`);
  return out;
}

/** Compress `image` with `c` in a fresh directory (`tool args -k busybox.img`); the compressed file's path. */
async function compress(env: ExecEnv, c: Candidate, image: string, dir: string): Promise<string> {
  await mkdir(dir);
  await link(image, join(dir, 'busybox.img'));
  await run(env, c.tool, [...c.args, '-k', '-q', 'busybox.img'], { cwd: dir });
  return join(dir, `busybox.img${suffix(c)}`);
}

/** Restore a compressed image into a sparse busybox.img in a fresh directory. */
async function restore(env: ExecEnv, c: Candidate, compressed: string, dir: string): Promise<string> {
  await mkdir(dir);
  const name = `busybox.img${suffix(c)}`;
  await link(compressed, join(dir, name));
  await run(env, c.tool, c.tool === 'zstd' ? ['-d', '-q', '--sparse', name] : ['-d', '-k', '-q', name], { cwd: dir });
  return join(dir, 'busybox.img');
}

export async function benchCompression(env: ExecEnv, image: string, base: string, runs: number, print = true): Promise<CompressionRow[]> {
  const st = await stat(image);
  const rows: CompressionRow[] = [];
  let n = 0;
  for (const c of CANDIDATES) {
    const cs: number[] = [];
    const rs: number[] = [];
    const hashes = new Set<string>();
    let bytes = 0;
    let restoredAllocated = 0;
    for (let i = 0; i < runs; i++) {
      let compressed = '';
      const dir = join(base, `c${n++}`);
      cs.push(await timed(env, async () => (compressed = await compress(env, c, image, dir))));
      bytes = (await stat(compressed)).size;
      hashes.add(await sha256File(compressed));
      let restored = '';
      rs.push(await timed(env, async () => (restored = await restore(env, c, compressed, `${dir}-r`))));
      restoredAllocated = (await stat(restored)).blocks * 512;
      if (i === 0 && (await run(env, 'cmp', [restored, image], { okExitCodes: [0, 1] })).exitCode !== 0) throw new Error(`${c.label}: the restored image differs`);
      await rm(dir, { recursive: true, force: true });
      await rm(`${dir}-r`, { recursive: true, force: true });
    }
    const row = { label: c.label, bytes, ratio: st.size / bytes, allocatedRatio: (st.blocks * 512) / bytes, compressS: median(cs), restoreS: median(rs), restoredAllocated, deterministic: hashes.size === 1 };
    if (print) console.log(`${row.label}: ${bytes} bytes, compress ${row.compressS.toFixed(2)} s, restore ${row.restoreS.toFixed(2)} s`);
    rows.push(row);
  }
  return rows;
}

function stageContext(workDir: string, env: ExecEnv): StageContext {
  return { workDir, ...env, cleanup: new CleanupRegistry(), cache: new Cache(join(workDir, 'cache')), progress: () => {} };
}

/** The deliverable by hand: verify the image's sha256, compress it, copy the boot files, sum the lot. */
async function byHand(env: ExecEnv, out: string, r: BuildRecord, dir: string): Promise<void> {
  await mkdir(dir);
  const sum = (await run(env, 'sha256sum', [join(out, r.image.path)], { quiet: true })).stdout.split(' ')[0];
  if (sum !== r.image.sha256) throw new Error('by hand: the image does not match build.json');
  await run(env, 'zstd', [...IMAGE_COMPRESSION.args, '-q', join(out, r.image.path), '-o', join(dir, 'busybox.img.zst')]);
  for (const a of [r.boot.kernel, r.boot.ramdisk]) if (a) await run(env, 'cp', [join(out, a.path), dir]);
  const names = (await readdir(dir)).sort();
  await writeFile(join(dir, 'SHA256SUMS'), (await run(env, 'sha256sum', names, { cwd: dir })).stdout);
}

export async function benchRelease(runs: number, print = true): Promise<ReleaseBenchResult> {
  const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
  const base = await mkdtemp(join(tmpdir(), 'domu-bench-release-'));
  try {
    const out = await buildOnce(base);
    const record = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as BuildRecord;
    const image = join(out, record.image.path);
    const st = await stat(image);
    if (print) console.log(`image ${image}: ${st.size} bytes apparent, ${st.blocks * 512} allocated`);
    const compression = await benchCompression(env, image, base, runs, print);

    const samples = { check: [] as number[], write: [] as number[], release: [] as number[], byHand: [] as number[] };
    const sums = new Set<string>();
    const release = async (i: number) => {
      const ctx = stageContext(join(base, 'work'), env);
      const t0 = performance.now();
      const build = await checkBuild({ outDir: out }, ctx);
      const t1 = performance.now();
      const r = await writeRelease({ build, distDir: join(base, `dist-${i}`), domuVersion: 'bench' }, ctx);
      const t2 = performance.now();
      sums.add(await readFile(join(r.dir, 'SHA256SUMS'), 'utf8'));
      return { check: (t1 - t0) / 1000, write: (t2 - t1) / 1000 };
    };
    await release(-1); // untimed: page cache and JIT
    for (let i = 0; i < runs; i++) {
      let ph = { check: 0, write: 0 };
      samples.release.push(await timed(env, async () => (ph = await release(i))));
      samples.check.push(ph.check);
      samples.write.push(ph.write);
      samples.byHand.push(await timed(env, () => byHand(env, out, record, join(base, `hand-${i}`))));
      if (print) console.log(`run ${i + 1}/${runs}: domu release ${samples.release[i]!.toFixed(3)} s (check ${ph.check.toFixed(3)}, write ${ph.write.toFixed(3)}), by hand ${samples.byHand[i]!.toFixed(3)} s`);
    }
    return {
      runs,
      apparent: st.size,
      allocated: st.blocks * 512,
      compression,
      checkS: median(samples.check),
      writeS: median(samples.write),
      releaseS: median(samples.release),
      byHandS: median(samples.byHand),
      identical: sums.size === 1,
    };
  } finally {
    await rm(base, { recursive: true, force: true });
  }
}

export async function reportReleaseBench(): Promise<void> {
  const runs = Number(process.env.BENCH_RUNS ?? 3);
  console.log(`release: busybox 1.35.0 guest image (1 GiB sparse), ${runs} runs each`);
  const r = await benchRelease(runs);
  const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
  console.log('');
  console.log(`| ${'compression (one thread)'.padEnd(30)} | size     | ratio | vs alloc | compress s | restore s | restored alloc | same bytes |`);
  console.log(`| ${'-'.repeat(30)} | -------- | ----- | -------- | ---------- | --------- | -------------- | ---------- |`);
  for (const c of r.compression) {
    const chosen = c.label === `${IMAGE_COMPRESSION.tool} ${IMAGE_COMPRESSION.args.join(' ')}` ? ' *' : '';
    console.log(
      `| ${(c.label + chosen).padEnd(30)} | ${mb(c.bytes).padStart(8)} | ${c.ratio.toFixed(0).padStart(5)} | ${c.allocatedRatio.toFixed(1).padStart(8)} | ${c.compressS.toFixed(2).padStart(10)} | ${c.restoreS.toFixed(2).padStart(9)} | ${mb(c.restoredAllocated).padStart(14)} | ${(c.deterministic ? 'yes' : 'NO').padStart(10)} |`,
    );
  }
  console.log(`(* the release's choice; ratio = ${mb(r.apparent)} apparent / size, vs alloc = ${mb(r.allocated)} allocated / size)`);
  console.log('');
  console.log(`| ${'release'.padEnd(34)} | median s | vs hand  |`);
  console.log(`| ${'-'.repeat(34)} | -------- | -------- |`);
  const row = (name: string, s: number) => `| ${name.padEnd(34)} | ${s.toFixed(3).padStart(8)} | ${(s / r.byHandS).toFixed(2).padStart(8)} |`;
  console.log(row('by hand (sha256sum, zstd, cp, sum)', r.byHandS));
  console.log(row('domu release', r.releaseS));
  console.log(row('  check (build.json, hashes)', r.checkS));
  console.log(row('  write (compress, restore check…)', r.writeS));
  const ratio = r.releaseS / r.byHandS;
  console.log(`releases byte-identical across runs: ${r.identical ? 'yes' : 'NO'}`);
  console.log(`target: domu release <= 1.50 x by hand: ${ratio <= 1.5 ? 'met' : 'NOT met'} (${ratio.toFixed(2)})\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  reportReleaseBench().catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
