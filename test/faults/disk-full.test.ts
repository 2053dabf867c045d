// Disk full (issue 8): --out, the cache and the store each on a small real file system (an ext4
// made with mke2fs on a loop device, or a tmpfs), full before a run or filled while it writes by
// another writer (the way a disk fills up), through the real CLI (and, for the store filling in
// the middle of a copy, the real publish() in a child process paused by its hooks).
// Every case: exit 1 with ONE error line naming the place, the stage and what to do, no stack
// trace; nothing partial (no .tmp-* file, no new file at a final path, no mount or loop device of
// the run); the previous out/ or store content byte-identical; then, with space, the next run
// succeeds.
import { startPublishChild as startChild } from '../helpers/publish-driver.js';
import { startPaused, type Paused } from './harness.js';
import { mountPoints, unmountIfMounted } from '../../src/core/mounts.js';
import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readdirSync, statfsSync, writeFileSync, writeSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, rename, rm, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, afterEach, beforeAll, describe, expect, test } from 'vitest';
import { sha256Sparse } from '../../src/fs/sparse.js';
import { ExecError, run, type ExecEnv } from '../../src/core/exec.js';
import { explainStageError, NoSpaceError } from '../../src/core/stage-errors.js';
import { sha256File } from '../../src/core/hash.js';
import { memoryLogger } from '../../src/core/log.js';
import { LOCK_NAME } from '../../src/store/storelock.js';
import type { BuildRecord } from '../../src/model/buildrecord.js';
import { BUSYBOX_1_35_SHA256, getBusyboxTarball, TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { domu, type CliResult } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import type { ChildEvent, ChildSpec } from '../helpers/publish-child.js';
import { reliability } from './reliability.js';

const isRoot = process.getuid?.() === 0;
const MiB = 1024 * 1024;
const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
/** SOURCE_DATE_EPOCH of the "previous" build and of the next one (a different image, ramdisk, record). */
const EPOCH_A = 1600000000;
const EPOCH_B = 1600086400;

let base: string;
let tarball: string;
/** The default lab (two hosts), busybox 1.35.0, the test kernel given by path (no download). */
let guest: string;
/** The same with twelve hosts: 30 more config files and 20 more directories. */
let guest12: string;

const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

// ---------------------------------------------------------------------------------------------
// Small file systems, undone after every test (even a failed one)

interface SmallFs {
  mnt: string;
  kind: 'ext4' | 'tmpfs';
  backing?: string;
  dev?: string;
}

const filesystems: SmallFs[] = [];

/** Let a run paused at a fault point go on (SIGUSR2) and wait for its end. */
async function resume(p: Paused): Promise<CliResult> {
  p.child.kill('SIGUSR2');
  const r = await p.child;
  return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
}

/** An ext4 of `mib` MiB (4 KiB blocks, no reserved blocks) on a loop device, mounted. */
async function ext4(name: string, mib: number, opts: { inodes?: number } = {}): Promise<SmallFs> {
  const backing = join(base, `${name}.ext4`);
  await run(env, 'truncate', ['-s', `${mib}M`, backing]);
  await run(env, 'mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-m', '0', ...(opts.inodes ? ['-N', String(opts.inodes)] : []), backing]);
  const fs: SmallFs = { mnt: join(base, name), kind: 'ext4', backing };
  await mkdir(fs.mnt);
  filesystems.push(fs); // before the loop device exists: afterEach undoes whatever of it is there
  fs.dev = (await run(env, 'losetup', ['--find', '--show', backing])).stdout.trim();
  await run(env, 'mount', ['-t', 'ext4', fs.dev, fs.mnt]);
  return fs;
}

/**
 * More space, the way an administrator adds it: a bigger backing device and resize2fs (offline:
 * growing a mounted ext4 needs CAP_SYS_RESOURCE, which containers often drop).
 */
async function growExt4(fs: SmallFs, mib: number): Promise<void> {
  await run(env, 'umount', [fs.mnt]);
  await run(env, 'truncate', ['-s', `${mib}M`, fs.backing!]);
  await run(env, 'losetup', ['-c', fs.dev!]);
  await run(env, 'e2fsck', ['-f', '-p', fs.dev!]);
  await run(env, 'resize2fs', [fs.dev!]);
  await run(env, 'mount', ['-t', 'ext4', fs.dev!, fs.mnt]);
}

async function tmpfs(name: string, size: string): Promise<SmallFs> {
  const fs: SmallFs = { mnt: join(base, name), kind: 'tmpfs' };
  await mkdir(fs.mnt);
  filesystems.push(fs);
  await run(env, 'mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0755`, 'domu-disk-full', fs.mnt]);
  return fs;
}

async function unmountAll(): Promise<void> {
  for (const fs of filesystems.splice(0).reverse()) {
    await unmountIfMounted(env, fs.mnt).catch(() => undefined);
    if (fs.dev) await run(env, 'losetup', ['-d', fs.dev]).catch(() => undefined);
    if (fs.backing) await rm(fs.backing, { force: true });
  }
}

/** The run left no mount below `fs` and no loop device on a file in it. */
async function expectNoRunLeftovers(fs: SmallFs): Promise<void> {
  expect((await mountPoints()).filter((m) => m.startsWith(`${fs.mnt}/`) || /\/domu-mnt-/.test(m) && m.startsWith(base))).toEqual([]);
  const loops = (await run(env, 'losetup', ['-a'])).stdout.split('\n').filter((l) => l.includes(`${fs.mnt}/`));
  expect(loops).toEqual([]);
}

// ---------------------------------------------------------------------------------------------
// Filling a file system, as another writer would

let fillers = 0;

function freeBytes(dir: string): number {
  const s = statfsSync(dir);
  return s.bavail * s.bsize;
}

/** Take `dir`'s file system down to `leave` free bytes with real blocks (fallocate, then 4 KiB writes). */
function fillSync(dir: string, leave = 0): void {
  const file = join(dir, `filler-${++fillers}`);
  // Whole bytes: `leave` may be derived from a built file's size (an odd ramdisk halves to a fraction).
  const bulk = Math.floor(freeBytes(dir) - leave - MiB);
  if (bulk > 0) execFileSync('fallocate', ['-l', String(bulk), file]);
  const fd = openSync(`${file}-tail`, 'a');
  const block = Buffer.alloc(4096, 0x5a);
  try {
    while (freeBytes(dir) > leave) writeSync(fd, block);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  } finally {
    closeSync(fd);
  }
}

/** Use up every free inode of `dir`'s file system with empty files. */
function fillInodesSync(dir: string): number {
  const d = join(dir, 'filler-inodes');
  mkdirSync(d, { recursive: true });
  let n = 0;
  try {
    for (;;) writeFileSync(join(d, String(n++)), '');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
  }
  return n - 1;
}

async function removeFillers(dir: string): Promise<void> {
  for (const n of await readdir(dir)) if (n.startsWith('filler-')) await rm(join(dir, n), { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// What is there

const SKIP = new Set(['lost+found', '.domu.lock']);

/** Every name below `root` (fillers and lost+found aside) with its content hash (holes read as zeros). */
async function snapshot(root: string, prefix = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const n of (await readdir(join(root, prefix))).sort()) {
    if (SKIP.has(n) || n.startsWith('filler-')) continue;
    const rel = prefix ? `${prefix}/${n}` : n;
    const p = join(root, rel);
    const st = await lstat(p);
    if (st.isDirectory()) {
      out[`${rel}/`] = 'dir';
      Object.assign(out, await snapshot(root, rel));
    } else if (st.isSymbolicLink()) out[rel] = `-> ${await readlink(p)}`;
    else out[rel] = await sha256Sparse(env, p);
  }
  return out;
}

/** `.tmp-*` names anywhere below `root`. */
function temps(root: string): string[] {
  const found: string[] = [];
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.name.startsWith('.tmp-')) found.push(join(d, e.name));
      if (e.isDirectory() && !e.name.startsWith('filler-')) walk(join(d, e.name));
    }
  };
  walk(root);
  return found;
}

/** The one `domu <cmd>: error:` line of a failed run, after checking exit 1 and no stack trace. */
function failure(r: CliResult, cmd: string): string {
  const lines = r.stderr.split('\n').filter((l) => l.startsWith(`domu ${cmd}: error: `));
  expect(r.exitCode, r.stderr).toBe(1);
  expect(lines, r.stderr).toHaveLength(1);
  expect(r.stderr).not.toMatch(/^\s+at /m);
  expect(r.stderr).not.toMatch(/internal error|this is a bug/);
  return lines[0]!;
}

function succeeded(r: CliResult): void {
  expect(r.exitCode, `${r.stdout}\n${r.stderr}`).toBe(0);
}

const build = (out: string, epoch: number, extra: string[] = [], opts: { config?: string; cache?: string } = {}) =>
  ['build', '--config', opts.config ?? guest, '--cache-dir', opts.cache ?? TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out, '--source-date-epoch', String(epoch), ...extra];

async function record(out: string): Promise<BuildRecord> {
  return JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as BuildRecord;
}

// ---------------------------------------------------------------------------------------------

beforeAll(async () => {
  if (!isRoot) return;
  tarball = await getBusyboxTarball();
  const kernel = await getKernelPackage();
  base = await tempDir('domu-disk-full-');
  const hosts = (n: number) =>
    `hosts:\n${Array.from({ length: n }, (_, i) => `  - { name: test${i + 1}, address: 172.16.31.${i + 10}, bridge: xenbr0${i < 2 ? `, hwaddr: "${['08:00:27:16:d9:aa', '08:00:27:6a:9d:57'][i]}"` : ''} }\n`).join('')}`;
  const common = `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernel.image}\n`;
  guest = join(base, 'guest.yaml');
  guest12 = join(base, 'guest12.yaml');
  await writeFile(guest, common);
  await writeFile(guest12, `${common}${hosts(12)}`);
  // The compiled busybox in the shared cache (seconds when it is there), so that no test compiles.
  succeeded(await domu(build(join(base, 'warm'), EPOCH_A, ['--until', 'compile'])));
}, 600_000);

afterEach(async () => {
  await unmountAll();
});

afterAll(async () => {
  await unmountAll();
  if (base) await rm(base, { recursive: true, force: true });
});

describe.skipIf(!isRoot)('disk full', () => {
  test('--out too full for the new image: the free-space check refuses before writing', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: '--out (a small ext4) has less free space than the new image needs',
      expected: 'exit 1 before anything is written, naming --out, the image stage, the size needed and free; previous build intact; next run with space succeeds',
    });
    const fs = await ext4('out-check', 160);
    const out = join(fs.mnt, 'out');
    succeeded(await domu(build(out, EPOCH_A)));
    const before = await snapshot(out);
    fillSync(fs.mnt, 12 * MiB);

    const res = await domu(build(out, EPOCH_B));
    const line = failure(res, 'build');
    const m = new RegExp(`^domu build: error: no space left on ${esc(out)} \\(the out directory, --out\\) while building the image busybox\\.img: it needs about ([\\d.]+) MiB, ([\\d.]+) MiB free; nothing was written; free some space there or use --out on a larger file system$`).exec(line);
    expect(m, line).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThan(Number(m![2]));
    expect(await snapshot(out)).toEqual(before);
    expect(temps(fs.mnt)).toEqual([]);
    await expectNoRunLeftovers(fs);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; out/ byte-identical, no .tmp-*`);

    await removeFillers(fs.mnt);
    succeeded(await domu(build(out, EPOCH_B)));
    expect((await record(out)).image.sha256).not.toBe(before['busybox.img']);
    expect(temps(fs.mnt)).toEqual([]);
    r.observe('space freed: the next build exits 0 with the new image');
  }, 180_000);

  test('--out fills while the image is written: the previous image and build.json stay', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'another writer fills --out (ext4) after the free-space check, while mke2fs writes the new image',
      expected: 'exit 1 naming --out and the image stage; temp image removed; previous build byte-identical; after growing the file system the next run succeeds',
    });
    const fs = await ext4('out-during', 160);
    const out = join(fs.mnt, 'out');
    succeeded(await domu(build(out, EPOCH_A)));
    const before = await snapshot(out);

    // Paused once the temporary image exists (created empty, sparse; after the free-space check):
    // the rest of the disk goes, then the run goes on (SIGUSR2) and mke2fs meets the full disk.
    const paused = await startPaused(build(out, EPOCH_B), 'image:created');
    expect(temps(out).some((t) => t.includes('.tmp-busybox.img-'))).toBe(true);
    fillSync(fs.mnt, 0);
    const res = await resume(paused);
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(out)} \\(the out directory, --out\\) while building the image busybox\\.img: it needs about [\\d.]+ MiB, \\d+ KiB free; the previous image is untouched; free some space there or use --out on a larger file system$`));
    expect(`${res.stdout}\n${res.stderr}`).toMatch(/populating \S+\.tmp-busybox\.img-\S+ \(rootless\)/); // past the check: it failed writing
    expect(await snapshot(out)).toEqual(before);
    expect(temps(fs.mnt)).toEqual([]);
    await expectNoRunLeftovers(fs);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; out/ byte-identical, no .tmp-*`);

    await growExt4(fs, 320);
    succeeded(await domu(build(out, EPOCH_B)));
    expect((await record(out)).image.sha256).not.toBe(before['busybox.img']);
    r.observe('file system grown (resize2fs): the next build exits 0');
  }, 180_000);

  test('--out has room for the new image but not for the ramdisk beside it: refused up front', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: '--out has room for the new image alone, not for the new ramdisk that goes beside it',
      expected: 'refused by the free-space check (image + boot files) before anything is written; no new image beside an old ramdisk',
    });
    const fs = await ext4('out-boot', 160);
    const out = join(fs.mnt, 'out');
    succeeded(await domu(build(out, EPOCH_A)));
    const before = await snapshot(out);
    const rec = await record(out);
    const ramdiskBytes = rec.boot.ramdisk!.apparentBytes;
    // What the image and the boot files need, as the check says it.
    fillSync(fs.mnt, MiB);
    const probe = /it needs about ([\d.]+) MiB/.exec(failure(await domu(build(out, EPOCH_B)), 'build'));
    expect(probe).not.toBeNull();
    // "about X.Y MiB" is rounded to 0.1 MiB: round the bytes up (and whole, for fallocate).
    const need = Math.ceil(Number(probe![1]) * MiB);
    await removeFillers(fs.mnt);
    // Room for all of it but half the ramdisk.
    fillSync(fs.mnt, need - Math.floor(ramdiskBytes / 2));

    const res = await domu(build(out, EPOCH_B));
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(out)} \\(the out directory, --out\\) while building the image busybox\\.img: it needs about [\\d.]+ MiB, [\\d.]+ MiB free; nothing was written; `));
    expect(`${res.stdout}\n${res.stderr}`).not.toMatch(/populating /);
    expect(await snapshot(out)).toEqual(before);
    expect(temps(fs.mnt)).toEqual([]);
    await expectNoRunLeftovers(fs);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; out/ byte-identical`);

    await removeFillers(fs.mnt);
    succeeded(await domu(build(out, EPOCH_B)));
    const after = await record(out);
    expect(after.boot.ramdisk!.sha256).not.toBe(rec.boot.ramdisk!.sha256);
    expect(await sha256File(join(out, after.boot.ramdisk!.path))).toBe(after.boot.ramdisk!.sha256);
    r.observe('space freed: the next build exits 0');
  }, 180_000);

  test('--out runs out of inodes when the ramdisk is copied beside the finished image', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: '--out (ext4 with few inodes) has no inode left when the kernel and ramdisk are copied beside the finished image',
      expected: 'exit 1 naming --out, the image stage and the inodes; the new image is not renamed into place; previous build byte-identical',
    });
    const fs = await ext4('out-inodes', 160, { inodes: 128 });
    const out = join(fs.mnt, 'out');
    succeeded(await domu(build(out, EPOCH_A)));
    const before = await snapshot(out);

    // Paused with the new image complete under its temporary name: every inode goes, then the run
    // goes on (SIGUSR2) to copy the kernel and ramdisk beside it.
    const paused = await startPaused(build(out, EPOCH_B), 'image:populated');
    const taken = fillInodesSync(fs.mnt);
    const res = await resume(paused);
    expect(taken).toBeGreaterThan(0);
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(out)} \\(the out directory, --out\\) while building the image busybox\\.img: the file system has no free inodes left \\(\\d+ in all; [\\d.]+ MiB free\\); the previous image is untouched; remove some files there or use --out on a larger file system$`));
    expect(`${res.stdout}\n${res.stderr}`).toMatch(/checking \S+\.tmp-busybox\.img-\S+ \(e2fsck -fn\)/); // the image was complete
    expect(await snapshot(out)).toEqual(before);
    expect(temps(fs.mnt)).toEqual([]);
    await expectNoRunLeftovers(fs);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; out/ byte-identical`);

    await removeFillers(fs.mnt);
    succeeded(await domu(build(out, EPOCH_B)));
    r.observe('inodes freed: the next build exits 0');
  }, 180_000);

  test('--out fills while the Xen configs are written: all of them or none', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: '--out is full (4 blocks left) when a build with ten more hosts writes their Xen configs (image up to date)',
      expected: 'exit 1 naming --out and the Xen configs stage; no new config, host directory or .tmp-* left; previous configs byte-identical',
    });
    const fs = await ext4('out-configs', 96);
    const out = join(fs.mnt, 'out');
    succeeded(await domu(build(out, EPOCH_A)));
    const before = await snapshot(out);
    fillSync(fs.mnt, 4 * 4096);

    const res = await domu(build(out, EPOCH_A, [], { config: guest12 }));
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(out)} \\(the out directory, --out\\) while writing the Xen configs: a file system of [\\d.]+ MiB with \\d+ KiB free now; the configs there are unchanged; free some space there or use --out on a larger file system$`));
    expect(await snapshot(out)).toEqual(before);
    expect(temps(fs.mnt)).toEqual([]);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; out/ byte-identical`);

    await removeFillers(fs.mnt);
    succeeded(await domu(build(out, EPOCH_A, [], { config: guest12 })));
    expect((await record(out)).configs).toContain('xen/test12/busybox.cfg');
    expect((await snapshot(out))['busybox.img']).toBe(before['busybox.img']);
    r.observe('space freed: the next build exits 0 with 12 hosts');
  }, 180_000);

  test('a fresh cache on a tiny file system: the source stage fails, no half entry', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'a fresh --cache-dir on a 2 MiB tmpfs: the 2.4 MB busybox tarball does not fit',
      expected: 'exit 1 naming the cache and the source stage; no .tmp-* and no sources entry; next run with a bigger cache succeeds',
    });
    const fs = await tmpfs('cache-tiny', '2m');
    const args = [...build(join(base, 'out-cache-tiny'), EPOCH_A, ['--until', 'extract', '--set', 'busybox.fallback=none'], { cache: fs.mnt })];
    const res = await domu(args);
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(fs.mnt)} \\(the cache, --cache-dir\\) while fetching the busybox source: a file system of 2\\.0 MiB with [\\d.]+ MiB free now; free some space there or use --cache-dir on a larger file system$`));
    expect(temps(fs.mnt)).toEqual([]);
    expect(await readdir(join(fs.mnt, 'sources')).catch(() => [])).toEqual([]);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; no .tmp-*, no sources entry`);

    await run(env, 'mount', ['-o', 'remount,size=64m', fs.mnt]);
    succeeded(await domu(args));
    expect(await sha256File(join(fs.mnt, 'sources', BUSYBOX_1_35_SHA256, 'busybox-1.35.0.tar.bz2'))).toBe(BUSYBOX_1_35_SHA256);
    expect(temps(fs.mnt)).toEqual([]);
    r.observe('remounted with 64 MiB: the next run exits 0');
  }, 120_000);

  test('a fresh cache too small for the source tree: extraction fails, no half tree', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'a fresh --cache-dir on a 12 MiB tmpfs: the tarball fits, the extracted tree (20 MB+) does not',
      expected: 'exit 1 naming the cache and the extract stage; no .tmp-* and no trees entry; the tarball entry complete; next run with space succeeds',
    });
    const fs = await tmpfs('cache-small', '12m');
    const args = build(join(base, 'out-cache-small'), EPOCH_A, ['--until', 'extract'], { cache: fs.mnt });
    const res = await domu(args);
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(fs.mnt)} \\(the cache, --cache-dir\\) while extracting the busybox source: a file system of 12\\.0 MiB with [\\d.]+ MiB free now; free some space there or use --cache-dir on a larger file system$`));
    expect(temps(fs.mnt)).toEqual([]);
    expect(await readdir(join(fs.mnt, 'trees'))).toEqual([]);
    expect(await sha256File(join(fs.mnt, 'sources', BUSYBOX_1_35_SHA256, 'busybox-1.35.0.tar.bz2'))).toBe(BUSYBOX_1_35_SHA256);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; no .tmp-*, no trees entry`);

    await run(env, 'mount', ['-o', 'remount,size=96m', fs.mnt]);
    succeeded(await domu(args));
    expect((await readdir(join(fs.mnt, 'trees'))).filter((n) => !n.startsWith('.'))).toHaveLength(1);
    expect(temps(fs.mnt)).toEqual([]);
    r.observe('remounted with 96 MiB: the next run exits 0');
  }, 120_000);

  test('domu release into a --dist too small for the release: nothing half-written', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'release --dist on a 4 MiB tmpfs: the compressed image fits, the 8 MiB kernel does not',
      expected: 'exit 1 naming --dist and the release; no .tmp-* and no release directory left; next release with space succeeds',
    });
    const out = join(base, 'out-release');
    succeeded(await domu(build(out, EPOCH_A)));
    const fs = await tmpfs('dist', '4m');
    const args = ['release', '--config', guest, '--cache-dir', join(base, 'cache-release'), '--out', out, '--dist', fs.mnt];
    const res = await domu(args);
    const line = failure(res, 'release');
    expect(line).toMatch(new RegExp(`^domu release: error: no space left on ${esc(fs.mnt)} \\(the release directory, --dist\\) while writing the release busybox-1\\.35\\.0-[0-9a-f]{12}: a file system of 4\\.0 MiB with [\\d.]+ [KM]iB free now; nothing was left behind; free some space there or use --dist on a larger file system$`));
    expect(await readdir(fs.mnt)).toEqual([]);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu release: error: ', '')}; --dist empty`);

    await run(env, 'mount', ['-o', 'remount,size=64m', fs.mnt]);
    succeeded(await domu(args));
    const [name] = await readdir(fs.mnt);
    expect(name).toMatch(/^busybox-1\.35\.0-[0-9a-f]{12}$/);
    await execa('sha256sum', ['-c', 'SHA256SUMS'], { cwd: join(fs.mnt, name!) });
    r.observe('remounted with 64 MiB: the next release exits 0 and passes sha256sum -c');
  }, 180_000);

  test('a program runs out of space in a stage: the error names the place from its stderr', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'cp -a runs out of space in the cache (a 1 MiB tmpfs) as in the rootfs stage; the error is a program\'s stderr',
      expected: 'the generic translation names the cache, the stage and what to do; without known places, the failing directory',
    });
    const fs = await tmpfs('cache-cp', '1m');
    const src = join(base, 'big');
    await writeFile(src, randomBytes(4 * MiB));
    const staging = join(fs.mnt, 'runs', 'run-1', 'rootfs');
    await mkdir(staging, { recursive: true });
    const err = await run(env, 'cp', ['-a', '--', src, join(staging, 'big')]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ExecError);
    expect((err as ExecError).stderr).toMatch(/No space left on device/);

    const known = explainStageError('rootfs', err, { cacheDir: fs.mnt });
    expect(known).toBeInstanceOf(NoSpaceError);
    expect((known as NoSpaceError).exitCode).toBe(1);
    const line = (known as Error).message;
    expect(line).toMatch(new RegExp(`^no space left on ${esc(fs.mnt)} \\(the cache, --cache-dir\\) while assembling the root file system: a file system of 1\\.0 MiB with \\d+ KiB free now; free some space there or use --cache-dir on a larger file system$`));
    const bare = (explainStageError('rootfs', err) as Error).message;
    expect(bare).toMatch(new RegExp(`^no space left on ${esc(staging)} while assembling the root file system: a file system of 1\\.0 MiB with \\d+ KiB free now; free some space there and run again$`));
    // Not a full disk: unchanged.
    const other = new Error('something else');
    expect(explainStageError('rootfs', other)).toBe(other);
    r.observe(`${line}; without places: ${bare}`);
  });

  test('domu build --publish to a store without room: refused before writing', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'build --publish into a mounted ext4 store with 8 MiB free for a 37 MiB image and ramdisk',
      expected: 'exit 1 naming the store, the size needed and free; nothing written; store byte-identical, lock released; publishes once space is freed',
    });
    const fs = await ext4('store-check', 160);
    const store = fs.mnt;
    const out = join(base, 'out-store-check');
    succeeded(await domu(build(out, EPOCH_A, ['--publish', '--store', store])));
    const before = await snapshot(store);
    fillSync(store, 8 * MiB);

    const res = await domu(build(out, EPOCH_B, ['--publish', '--store', store]));
    const line = failure(res, 'build');
    expect(line).toMatch(new RegExp(`^domu build: error: no space left on ${esc(store)} \\(the store\\) while publishing 2 files to the store: it needs about [\\d.]+ MiB, [\\d.]+ MiB free; nothing was written; free space on the store \\(old \\.prev or \\.bak files\\?\\) and publish again$`));
    expect(await snapshot(store)).toEqual(before);
    expect(temps(store)).toEqual([]);
    expect(await readdir(store)).not.toContain(LOCK_NAME);
    await expectNoRunLeftovers(fs);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu build: error: ', '')}; store byte-identical, lock released`);

    await removeFillers(store);
    succeeded(await domu(build(out, EPOCH_B, ['--publish', '--store', store])));
    expect(await sha256Sparse(env, join(store, 'busybox.img'))).toBe((await record(out)).image.sha256);
    expect(await sha256Sparse(env, join(store, 'busybox.img.prev'))).toBe(before['busybox.img']);
    r.observe('space freed: the next publish exits 0, the old image kept as .prev');
  }, 180_000);

  test('domu configs --publish to a full store: refused before writing', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'configs --publish with ten more hosts into a store with 16 KiB free',
      expected: 'exit 1 naming the store and the size needed; nothing written; store byte-identical, lock released',
    });
    const fs = await ext4('store-configs', 96);
    const store = fs.mnt;
    const out = join(base, 'out-store-configs');
    succeeded(await domu(build(out, EPOCH_A, ['--publish', '--store', store])));
    const before = await snapshot(store);
    fillSync(store, 16 * 1024);

    const configs = ['configs', '--config', guest12, '--cache-dir', TEST_CACHE_DIR, '--out', out, '--publish', '--store', store];
    const res = await domu(configs);
    const line = failure(res, 'configs');
    expect(line).toMatch(new RegExp(`^domu configs: error: no space left on ${esc(store)} \\(the store\\) while publishing \\d+ files to the store: it needs about \\d+ KiB, \\d+ KiB free; nothing was written; `));
    expect(await snapshot(store)).toEqual(before);
    expect(temps(store)).toEqual([]);
    expect(await readdir(store)).not.toContain(LOCK_NAME);
    r.observe(`exit ${res.exitCode}: ${line.replace('domu configs: error: ', '')}; store byte-identical`);

    await removeFillers(store);
    succeeded(await domu(configs));
    expect(await readFile(join(store, 'xen/test12/busybox.cfg'), 'utf8')).toBe(await readFile(join(out, 'xen/test12/busybox.cfg'), 'utf8'));
    r.observe('space freed: the next configs --publish exits 0');
  }, 180_000);

  test('the store fills in the middle of a publish: the store is unchanged', async ({ task }) => {
    const r = reliability(task, {
      area: 'disk full',
      case: 'another writer fills the store while publish copies the kernel, after the new image was copied',
      expected: 'publish fails naming the store; the new image is not put in place; previous image, kernel and configs byte-identical; no .tmp-*; lock released',
    });
    const fs = await ext4('store-during', 160);
    const store = fs.mnt;
    const outA = join(base, 'out-store-a');
    const outB = join(base, 'out-store-b');
    succeeded(await domu(build(outA, EPOCH_A, ['--publish', '--store', store])));
    const recB = await (async () => {
      succeeded(await domu(build(outB, EPOCH_B)));
      return record(outB);
    })();
    const kernel = recB.boot.kernel!.path;
    const ramdisk = recB.boot.ramdisk!.path;
    // The store's kernel is an older one (same name, other bytes): it is copied too.
    await writeFile(join(store, `${kernel}.new`), randomBytes(8 * MiB));
    await rename(join(store, `${kernel}.new`), join(store, kernel));
    const before = await snapshot(store);

    const spec: ChildSpec = {
      input: { outDir: outB, store, files: [kernel, ramdisk, ...recB.configs], image: 'busybox.img', lockTimeoutMs: 10_000 },
      pauseInCopy: kernel,
    };
    const child = startChild(spec);
    await child.waitFor((e) => 'event' in e && e.event === 'copying');
    // The new image is complete in its temporary file by now; the kernel's first 4 MiB too.
    expect(temps(store).some((t) => /\.tmp-busybox\.img-/.test(t))).toBe(true);
    fillSync(store, 0);
    child.resume();
    const { exitCode: code } = await child.exit;
    const events = child.events;
    const end = events.find((e): e is Extract<ChildEvent, { event: 'error' }> => 'event' in e && e.event === 'error');
    expect(code).toBe(1);
    expect(end?.message).toMatch(new RegExp(`^no space left on ${esc(store)} \\(the store\\) while publishing 3 files to the store: it needs about [\\d.]+ MiB, [\\d.]+ [KM]iB free; the store is unchanged; free space on the store`));
    expect(await snapshot(store)).toEqual(before);
    expect(temps(store)).toEqual([]);
    expect(await readdir(store)).not.toContain(LOCK_NAME);
    r.observe(`exit ${code}: ${end?.message}; store byte-identical, no .tmp-*, lock released`);

    await removeFillers(store);
    const again = startChild({ input: spec.input });
    const done = await again.exit;
    expect(done.exitCode, JSON.stringify(again.events.slice(-3))).toBe(0);
    expect(await sha256Sparse(env, join(store, 'busybox.img'))).toBe(recB.image.sha256);
    expect(await sha256File(join(store, kernel))).toBe(recB.boot.kernel!.sha256);
    r.observe('space freed: the next publish exits 0');
  }, 180_000);
});

// ---------------------------------------------------------------------------------------------

