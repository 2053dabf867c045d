// The image stage: the staging tree (+ device nodes) → a sparse raw ext4 image at `output`.
//
// The image is built under a temporary name beside `output` (same file system, so the final
// rename is atomic) and renamed onto `output` only when it is complete and `e2fsck -fn` is clean;
// a previous file at `output` stays intact on any failure. Everything the stage creates (temp
// file, loop device, mount, mount point) is registered with ctx.cleanup before it exists where
// possible, and undone by the stage itself when it fails or is aborted.
//
// Two ways to populate it:
// - rootless (default when mke2fs has `-d`): `mke2fs -d <staging>`, then ONE `debugfs -w` pass
//   that creates the device nodes and sets every inode to root:root and the epoch. Reproducible:
//   UUID and directory hash seed derived from contentHash (+ size + label), E2FSPROGS_FAKE_TIME
//   for mke2fs's own timestamps, and every inode's atime/mtime/ctime/crtime set by debugfs —
//   so the staging tree's times (and its owner) do not matter, and the staging tree is never
//   modified (it may belong to someone else). Works for any user.
// - mount (classic; `auto` picks it when mke2fs lacks -d): loop device + mount + `cp -a` +
//   `chown` + `mknod`. Needs root. NOT byte-reproducible: the kernel writes mount/write times,
//   mount counts, the last-mounted path and journal contents, and inode ctimes are the build's
//   time; so it reports `reproducible: false`.
import { lstat, mkdtemp, open, readdir, rename, rm, rmdir, stat, statfs } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, dirname, join, posix, relative, resolve } from 'node:path';
import {
  debugfsSafe,
  defaultJournalBlocks,
  detectMke2fs,
  deterministicUuid,
  dryRunLayout,
  dumpe2fsHeader,
  e2fsckCheck,
  fixupScript,
  imagePath,
  inodesUsed,
  metadataBlocks,
  runDebugfs,
  type FsLayout,
} from '../fs/e2fs.js';
import { sha256Sparse } from '../fs/sparse.js';
import { abortError, AbortedError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { run, type ExecEnv } from '../core/exec.js';
import { formatSize } from '../core/size.js';
import { tempPathFor } from '../core/atomic.js';
import type { DeviceSpec } from '../fs/devtable.js';
import type { JournalResource } from '../core/journal.js';
import { faultPoint } from '../core/fault.js';
import { detachLoops, unmountIfMounted } from '../core/mounts.js';
import { findNoSpace, fsState, noSpaceError } from '../core/stage-errors.js';
import type { StageContext } from '../core/context.js';

/** A device node to create in the image. */
export type DeviceNode = DeviceSpec;

export type PopulateMode = 'auto' | 'rootless' | 'mount';

export interface ImageInput {
  /** The root tree, owned by whoever built it; read only. */
  staging: string;
  devices: DeviceNode[];
  /** Final image path. */
  output: string;
  /** Bytes. */
  size: number;
  /** Guest name: the file system label (ext4 keeps 16 bytes). */
  label: string;
  populate: PopulateMode;
  sourceDateEpoch: number;
  /** Hex identifying the tree's content: seeds the UUID and directory hash seed. */
  contentHash: string;
  /**
   * Files that must appear beside the image together with it (the kernel and ramdisk in --out):
   * counted in the free-space check, copied to temporary names once the image is complete and
   * checked, and renamed into place right after it. A failure before that leaves the previous
   * image and files untouched.
   */
  companions?: ImageCompanions;
}

export interface ImageCompanions {
  /** Bytes they take in the output's file system (those already in place count 0). */
  bytes: number;
  /** Copy them to temporary names beside their targets; on failure, removes what it copied. */
  stage(): Promise<StagedFiles>;
}

export interface StagedFiles {
  /** Rename the temporary files into place. */
  commit(): Promise<void>;
  /** Remove the temporary files (failure, abort). */
  discard(): Promise<void>;
}

export interface ImageOutput {
  path: string;
  sha256: string;
  /** stat size: exactly input.size. */
  apparentBytes: number;
  /** stat blocks × 512: what the sparse image takes on disk. */
  allocatedBytes: number;
  inodesUsed: number;
  /** Entries of the staging tree (the root itself not counted) + device nodes. */
  files: number;
  populate: 'rootless' | 'mount';
  reproducible: boolean;
  uuid: string;
}

const MiB = 1024 * 1024;
const LABEL_MAX = 16;

export async function imageStage(input: ImageInput, ctx: StageContext): Promise<ImageOutput> {
  const output = resolve(input.output);
  const staging = resolve(input.staging);
  checkInput(input);
  const label = truncateLabel(input.label, ctx);
  const devices = input.devices.map((d) => ({ ...d, path: imagePath(d.path) }));

  // Everything below runs before a single byte is written.
  const mke2fs = await detectMke2fs(ctx);
  const mode = choosePopulate(input.populate, mke2fs.populateFromDir, mke2fs.version);
  if (mode === 'mount' && process.getuid?.() !== 0) {
    throw new DomuError('loop-mount population needs root; use populate: rootless');
  }
  const tree = await scanTree(staging, mode === 'rootless');
  const mkdirs = missingParents(devices, tree);
  for (const d of devices) {
    if (tree.paths.has(d.path)) throw new InputError(`device node ${d.path} is also in the staging tree (${join(staging, d.path)}); remove one of them`);
    if (mode === 'rootless' && !debugfsSafe(d.path)) throw new DomuError(`device node path ${JSON.stringify(d.path)} contains a newline or a double quote`);
  }
  const uuid = deterministicUuid(input.contentHash, input.size, label);
  const common = ['-t', 'ext4', '-I', '256'];
  const need = await checkSize(ctx, input.size, tree, devices.length, mkdirs.length, common);
  const outDir = dirname(output);
  const extra = input.companions?.bytes ?? 0;
  const needBytes = await checkFreeSpace(outDir, output, need, extra);

  const res = new Resources(ctx);
  const tmp = tempPathFor(output);
  try {
    // The temp file: registered first, then created sparse (nothing written).
    res.add(`remove ${tmp}`, () => rm(tmp, { force: true }), { kind: 'path', path: tmp });
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.truncate(input.size);
    } finally {
      await fh.close();
    }
    await faultPoint('image:created', ctx.signal);
    ctx.log.info(`image ${formatSize(input.size)} (sparse), uuid ${uuid}, ${tree.entries} entries + ${devices.length} device nodes, populated ${mode}`);

    if (mode === 'rootless') {
      const fakeTime = { E2FSPROGS_FAKE_TIME: String(input.sourceDateEpoch) };
      ctx.log.info(`populating ${tmp} (rootless)`);
      await run(ctx, 'mke2fs', [...common, '-F', '-L', label, '-U', uuid, '-E', `hash_seed=${uuid},root_owner=0:0`, '-d', staging, tmp], { env: fakeTime });
      const script = fixupScript({
        mkdirs,
        devices,
        paths: ['/', '/lost+found', ...[...tree.paths].filter((p) => p !== '/lost+found')],
        epoch: input.sourceDateEpoch,
      });
      ctx.log.debug(`debugfs pass: ${script.split('\n').length - 1} commands`);
      await runDebugfs(ctx, tmp, script, { write: true, env: fakeTime });
    } else {
      await run(ctx, 'mke2fs', [...common, '-F', '-L', label, '-U', uuid, tmp]);
      await populateByMount(ctx, res, tmp, staging, devices);
    }

    if (ctx.signal.aborted) throw abortError(ctx.signal);
    await faultPoint('image:populated', ctx.signal);
    ctx.log.info(`checking ${tmp} (e2fsck -fn)`);
    const [, header, sha256, st] = await Promise.all([e2fsckCheck(ctx, tmp), dumpe2fsHeader(ctx, tmp), sha256Sparse(ctx, tmp), stat(tmp)]);
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    let staged: StagedFiles | undefined;
    if (input.companions) {
      ctx.log.debug('copying the files that go beside the image to temporary names');
      staged = await input.companions.stage();
      const s = staged;
      res.add('remove the temporary copies of the files beside the image', () => s.discard());
    }
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    await rename(tmp, output);
    await staged?.commit();
    res.releaseAll();
    const out: ImageOutput = {
      path: output,
      sha256,
      apparentBytes: st.size,
      allocatedBytes: st.blocks * 512,
      inodesUsed: inodesUsed(header),
      files: tree.entries + devices.length,
      populate: mode,
      reproducible: mode === 'rootless',
      uuid,
    };
    ctx.log.info(`image ${output}: ${formatSize(out.apparentBytes)} apparent, ${(out.allocatedBytes / MiB).toFixed(1)} MiB allocated, ${out.inodesUsed} inodes, sha256 ${sha256}`);
    return out;
  } catch (e) {
    const full = noSpaceIn(e, outDir);
    const fs = full ? fsState(outDir) : undefined; // as it was full, before the temp files go
    await res.undoAll();
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    if (e instanceof AbortedError) throw e;
    if (full) {
      throw noSpaceError({ code: full, dir: outDir, role: 'out', doing: `building the image ${basename(output)}`, need: needBytes, fs, note: (await stat(output).then(() => true, () => false)) ? 'the previous image is untouched' : 'nothing was left behind', cause: e });
    }
    if (isImageFull(e)) throw await tooSmall(ctx, input.size, tree, devices.length, mkdirs.length, common);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Input

function checkInput(input: ImageInput): void {
  if (!Number.isSafeInteger(input.size) || input.size <= 0) throw new InputError(`image.size ${input.size} is not a positive whole number of bytes`);
  if (!Number.isSafeInteger(input.sourceDateEpoch) || input.sourceDateEpoch < 0 || input.sourceDateEpoch >= 2 ** 34) {
    throw new InputError(`SOURCE_DATE_EPOCH ${input.sourceDateEpoch} is not whole seconds since 1970 that ext4 can store`);
  }
  if (!/^[0-9a-f]+$/i.test(input.contentHash)) throw new DomuError(`image: contentHash ${JSON.stringify(input.contentHash)} is not hex`);
  if (!input.label || /[\n\0]/.test(input.label)) throw new InputError(`image label ${JSON.stringify(input.label)} is empty or has control characters`);
  for (const d of input.devices) {
    const p = imagePath(d.path);
    const ok =
      d.path.startsWith('/') &&
      p !== '/' &&
      (d.type === 'c' || d.type === 'b') &&
      Number.isInteger(d.mode) && d.mode >= 0 && d.mode <= 0o7777 &&
      [d.uid, d.gid, d.major, d.minor].every((n) => Number.isInteger(n) && n >= 0);
    if (!ok) throw new InputError(`device node ${JSON.stringify(d)} is not valid (absolute path, type c|b, mode ≤ 07777, whole numbers)`);
  }
}

/** ext4 labels hold 16 bytes; mke2fs would truncate with a warning on its own. */
function truncateLabel(label: string, ctx: StageContext): string {
  const b = Buffer.from(label);
  if (b.length <= LABEL_MAX) return label;
  let n = LABEL_MAX;
  while (n > 0 && (b[n]! & 0xc0) === 0x80) n--; // whole UTF-8 characters only
  const short = b.subarray(0, n).toString();
  ctx.log.warn(`file system label ${JSON.stringify(label)} is longer than ${LABEL_MAX} bytes; using ${JSON.stringify(short)}`);
  return short;
}

function choosePopulate(want: PopulateMode, hasD: boolean, version: string | undefined): 'rootless' | 'mount' {
  if (want === 'mount') return 'mount';
  if (hasD) return 'rootless';
  if (want === 'rootless') throw new DomuError(`mke2fs ${version ?? '(unknown version)'} cannot populate from a directory (-d needs e2fsprogs ≥ 1.43); use populate: mount (as root) or install a newer e2fsprogs`);
  return 'mount';
}

// ---------------------------------------------------------------------------------------------
// The staging tree and what it needs

interface TreeScan {
  /** Image paths (`/bin/sh`) of every entry below the root. */
  paths: Set<string>;
  /** Directories among them (and `/`). */
  dirs: Set<string>;
  entries: number;
  /** Distinct inodes (hard links counted once), the root not included. */
  inodes: number;
  /** Blocks needed at a block size, computed lazily: data, slow symlinks, directory blocks. */
  blocksAt(bs: number): number;
  /** Bytes of file data (distinct inodes). */
  dataBytes: number;
}

async function scanTree(staging: string, forDebugfs: boolean): Promise<TreeScan> {
  let top;
  try {
    top = await stat(staging);
  } catch (e) {
    throw new DomuError(`staging tree ${staging}: ${errorMessage(e)}`);
  }
  if (!top.isDirectory()) throw new DomuError(`staging tree ${staging} is not a directory`);
  const paths = new Set<string>();
  const dirs = new Set<string>(['/']);
  const seen = new Set<string>();
  const fileSizes: number[] = [];
  const longLinks: number[] = [];
  /** Per directory: the sum of its entries' name lengths and their count. */
  const dirNames: { count: number; nameBytes: number }[] = [];
  let entries = 0;
  const walk = async (abs: string, rel: string): Promise<void> => {
    const names = await readdir(abs);
    let nameBytes = 0;
    for (const name of names) {
      const p = rel === '/' ? `/${name}` : `${rel}/${name}`;
      if (forDebugfs && !debugfsSafe(p)) {
        throw new DomuError(`staging tree: ${JSON.stringify(join(abs, name))} has a newline or a double quote in its name, which debugfs scripts cannot quote; rename it or use populate: mount`);
      }
      nameBytes += Buffer.byteLength(name);
      const a = join(abs, name);
      const st = await lstat(a);
      entries++;
      paths.add(p);
      const key = `${st.dev}:${st.ino}`;
      const first = !seen.has(key);
      seen.add(key);
      if (st.isDirectory()) {
        dirs.add(p);
        await walk(a, p);
      } else if (first && st.isFile()) {
        fileSizes.push(st.size);
      } else if (first && st.isSymbolicLink() && st.size >= 60) {
        longLinks.push(st.size);
      }
    }
    dirNames.push({ count: names.length + 2, nameBytes: nameBytes + 3 });
  };
  await walk(staging, '/');
  const dataBytes = fileSizes.reduce((a, b) => a + b, 0);
  return {
    paths,
    dirs,
    entries,
    inodes: seen.size,
    dataBytes,
    blocksAt(bs: number): number {
      let n = 0;
      for (const s of fileSizes) {
        const b = Math.ceil(s / bs);
        n += b + Math.floor(b / (4 * 32768)); // extent tree blocks for very large files
      }
      for (const s of longLinks) n += Math.ceil(s / bs);
      for (const d of dirNames) {
        // 8-byte entry header + name padded to 4; 12-byte checksum tail per block (metadata_csum).
        const bytes = d.count * 12 + d.nameBytes;
        const b = Math.max(1, Math.ceil(bytes / (bs - 12)));
        n += b + (b > 1 ? 1 : 0);
      }
      return n;
    },
  };
}

/** Parent directories of device nodes that the staging tree lacks (parents first). */
function missingParents(devices: readonly DeviceNode[], tree: TreeScan): string[] {
  const out: string[] = [];
  for (const d of devices) {
    const chain: string[] = [];
    for (let p = posix.dirname(d.path); p !== '/'; p = posix.dirname(p)) chain.unshift(p);
    for (const p of chain) {
      if (tree.paths.has(p) && !tree.dirs.has(p)) throw new InputError(`device node ${d.path}: ${p} in the staging tree is not a directory`);
      if (!tree.dirs.has(p) && !out.includes(p)) out.push(p);
    }
  }
  return out;
}

interface Need {
  /** Bytes of the smallest file system that holds the tree (at the given size's layout). */
  fsBytes: number;
  /** About what the sparse image takes on disk (data, journal, used metadata). */
  allocBytes: number;
  /** The journal's part of allocBytes. */
  journalBytes: number;
}

/** Whether a layout holds the tree; and the blocks it needs. */
function needAt(l: FsLayout, tree: TreeScan, devices: number, mkdirs: number): { fits: boolean; blocks: number; inodes: number; dataBlocks: number } {
  const dataBlocks = tree.blocksAt(l.blockSize) + mkdirs;
  const meta = metadataBlocks(l);
  // 2% and 64 blocks of slack for what the estimate does not model (extent blocks, htree).
  const blocks = Math.ceil((dataBlocks + meta) * 1.02) + 64;
  const inodes = 11 + tree.inodes + devices + mkdirs;
  return { fits: blocks <= l.blocks && inodes <= l.inodes, blocks, inodes, dataBlocks };
}

/** Size check before anything is written: InputError when `size` cannot hold the tree. */
async function checkSize(ctx: StageContext, size: number, tree: TreeScan, devices: number, mkdirs: number, mkfsArgs: string[]): Promise<Need> {
  const layout = await dryRunLayout(ctx, size, mkfsArgs);
  if (!layout) throw await tooSmall(ctx, size, tree, devices, mkdirs, mkfsArgs);
  const n = needAt(layout, tree, devices, mkdirs);
  if (!n.fits) throw await tooSmall(ctx, size, tree, devices, mkdirs, mkfsArgs);
  const bs = layout.blockSize;
  const journal = defaultJournalBlocks(layout.blocks);
  const written = n.dataBlocks + journal + Math.ceil((n.inodes * 256) / bs);
  return { fsBytes: n.blocks * bs, allocBytes: written * bs + MiB, journalBytes: journal * bs };
}

/** The "too small" InputError, with the smallest size that holds the tree and a suggestion. */
async function tooSmall(ctx: StageContext, size: number, tree: TreeScan, devices: number, mkdirs: number, mkfsArgs: string[]): Promise<InputError> {
  // The smallest whole number of MiB that holds the tree: double until it fits, then bisect.
  const fits = async (bytes: number) => {
    const l = await dryRunLayout(ctx, bytes, mkfsArgs);
    return l !== undefined && needAt(l, tree, devices, mkdirs).fits;
  };
  let lo = 0;
  let hi = Math.max(MiB, roundUp(tree.dataBytes, MiB));
  while (!(await fits(hi)) && hi < 2 ** 50) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > MiB) {
    const mid = roundUp((lo + hi) / 2, MiB);
    if (await fits(mid)) hi = mid;
    else lo = mid;
  }
  const least = hi;
  const suggest = niceSize(least * 1.25);
  return new InputError(`image.size ${formatSize(size)} is too small for the root file system: it needs at least ${formatSize(least)} (use --set image.size=${formatSize(suggest)})`);
}

function roundUp(n: number, unit: number): number {
  return Math.ceil(n / unit) * unit;
}

/** A round size ≥ n: a power of two MiB up to 1 GiB, whole 256 MiB steps above. */
function niceSize(n: number): number {
  if (n <= 1024 * MiB) {
    let s = MiB;
    while (s < n) s *= 2;
    return s;
  }
  return roundUp(n, 256 * MiB);
}


/** tmpfs: mke2fs's zeroing of the journal punches holes there instead of allocating (no ZERO_RANGE). */
const TMPFS_MAGIC = 0x01021994;

/**
 * Fail before writing when the output directory obviously cannot take the image (and `extra`
 * bytes of files that go beside it). Returns the bytes it asked for.
 */
async function checkFreeSpace(outDir: string, output: string, need: Need, extra: number): Promise<number> {
  let s;
  try {
    s = await statfs(outDir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new DomuError(`output directory ${outDir} does not exist`);
    return need.allocBytes + extra; // unknown: the build will tell
  }
  // On ext4, xfs and the like the journal is allocated (unwritten extents); on tmpfs it stays a hole.
  const bytes = (s.type === TMPFS_MAGIC ? need.allocBytes - need.journalBytes : need.allocBytes) + extra;
  const free = s.bavail * s.bsize;
  if (free < bytes) {
    throw noSpaceError({ dir: outDir, role: 'out', doing: `building the image ${basename(output)}`, need: bytes, note: 'nothing was written' });
  }
  return bytes;
}

/**
 * ENOSPC/EDQUOT of a write into `outDir` (or of a program writing the temp image there); not
 * when the error names a path elsewhere (e.g. the run journal in a full cache), which the
 * pipeline's generic translation names instead, and not when the image itself is full.
 */
function noSpaceIn(e: unknown, outDir: string): 'ENOSPC' | 'EDQUOT' | undefined {
  if (isImageFull(e)) return undefined;
  const f = findNoSpace(e);
  if (!f) return undefined;
  if (f.path !== undefined) {
    const rel = relative(outDir, resolve(f.path));
    if (rel.startsWith('..') || rel.startsWith('/')) return undefined;
  }
  return f.code;
}

/** The image itself is full (our estimate was short): mke2fs -d / debugfs / cp say so. */
function isImageFull(e: unknown): boolean {
  const text = `${errorMessage(e)}\n${(e as { stderr?: unknown } | undefined)?.stderr ?? ''}`;
  return /Could not allocate (block|inode) in ext2 filesystem/.test(text) || (e as { imageFull?: boolean } | undefined)?.imageFull === true;
}

// ---------------------------------------------------------------------------------------------
// Resources: the cleanup registry entries this stage made, undone by the stage itself on failure

class Resources {
  private readonly stack: { label: string; undo: () => Promise<void> | void; release: () => void }[] = [];
  constructor(private readonly ctx: StageContext) {}

  /** Register an undo action (before the resource exists); returns `done` for a normal release. */
  add(label: string, undo: () => Promise<void> | void, resource?: JournalResource): { undoNow: () => Promise<void> } {
    const release = this.ctx.cleanup.push(label, undo, resource);
    const entry = { label, undo, release };
    this.stack.push(entry);
    return {
      // The resource is given back normally (umount, detach): do it, then drop the entry.
      undoNow: async () => {
        await undo();
        release();
        const i = this.stack.indexOf(entry);
        if (i >= 0) this.stack.splice(i, 1);
      },
    };
  }

  /** Success: the remaining resources are kept (e.g. the temp file was renamed into place). */
  releaseAll(): void {
    for (const e of this.stack.splice(0)) e.release();
  }

  /** Failure or abort: undo newest first; an entry that fails to undo stays with the registry. */
  async undoAll(): Promise<void> {
    while (this.stack.length) {
      const e = this.stack.pop()!;
      try {
        this.ctx.log.debug(`cleanup: ${e.label}`);
        await e.undo();
        e.release();
      } catch (err) {
        this.ctx.log.warn(`cleanup failed: ${e.label}: ${errorMessage(err)} (left to the run's cleanup)`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Loop-mount population (root only; not reproducible, see the top of the file)

/** Commands of cleanups run after an abort, so they get a signal of their own. */
function cleanupEnv(ctx: StageContext): ExecEnv {
  return { log: ctx.log, signal: new AbortController().signal };
}

async function populateByMount(ctx: StageContext, res: Resources, tmp: string, staging: string, devices: DeviceNode[]): Promise<void> {
  const env = cleanupEnv(ctx);
  // Registered before losetup creates it: whatever loop device backs tmp is detached.
  const loop = res.add(`detach loop devices of ${tmp}`, async () => void (await detachLoops(env, tmp)), { kind: 'loop', file: tmp });
  const dev = (await run(ctx, 'losetup', ['--find', '--show', tmp])).stdout.trim();
  if (!dev.startsWith('/dev/')) throw new DomuError(`losetup --find --show ${tmp} printed ${JSON.stringify(dev)}`);
  const mnt = await mkdtemp(join(tmpdir(), 'domu-mnt-'));
  const mountDir = res.add(`remove mount point ${mnt}`, () => rmdir(mnt).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  }), { kind: 'path', path: mnt });
  // Registered before mount: unmounted if mounted (lazily when busy).
  const mounted = res.add(`unmount ${mnt}`, async () => void (await unmountIfMounted(env, mnt)), { kind: 'mount', path: mnt });
  await run(ctx, 'mount', ['-t', 'ext4', '-o', 'nodev,nosuid,noexec', dev, mnt]);
  ctx.log.info(`populating ${tmp} (mount)`);
  await faultPoint('image:mounted', ctx.signal);
  try {
    await run(ctx, 'cp', ['-a', '--', `${staging}/.`, `${mnt}/`]);
  } catch (e) {
    if (/No space left on device/.test(errorMessage(e))) throw Object.assign(new DomuError(`the image is full: ${errorMessage(e)}`), { imageFull: true });
    throw e;
  }
  await run(ctx, 'chown', ['-hR', '0:0', '--', mnt]);
  for (const dir of new Set(devices.map((d) => dirname(join(mnt, d.path))))) await run(ctx, 'mkdir', ['-p', '--', dir]);
  for (const d of devices) {
    const p = join(mnt, d.path);
    await run(ctx, 'mknod', ['-m', `0${(d.mode & 0o7777).toString(8)}`, '--', p, d.type, String(d.major), String(d.minor)]);
    await run(ctx, 'chown', ['-h', `${d.uid}:${d.gid}`, '--', p]);
  }
  await run(ctx, 'sync', ['-f', mnt]);
  if (ctx.signal.aborted) throw abortError(ctx.signal);
  await mounted.undoNow();
  await mountDir.undoNow();
  await loop.undoNow();
}
