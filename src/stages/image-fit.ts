// Before the image stage writes a byte (image.ts): what the staging tree holds (entries, data,
// the paths debugfs must create), whether it fits the requested size as mke2fs would lay it out
// (and, if not, the smallest round size that does), and whether the output's file system has room.
import { lstat, readdir, stat, statfs } from 'node:fs/promises';
import { basename, join, posix, relative, resolve } from 'node:path';
import { debugfsSafe, defaultJournalBlocks, dryRunLayout, metadataBlocks, type FsLayout } from '../fs/e2fs.js';
import { DomuError, errorMessage, InputError } from '../core/errors.js';
import { formatSize } from '../core/size.js';
import { findNoSpace, noSpaceError } from '../core/stage-errors.js';
import type { StageContext } from '../core/context.js';
import type { DeviceSpec as DeviceNode } from '../fs/devtable.js';

export const MiB = 1024 * 1024;

export interface TreeScan {
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

export async function scanTree(staging: string, forDebugfs: boolean): Promise<TreeScan> {
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
export function missingParents(devices: readonly DeviceNode[], tree: TreeScan): string[] {
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

export interface Need {
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
export async function checkSize(ctx: StageContext, size: number, tree: TreeScan, devices: number, mkdirs: number, mkfsArgs: string[]): Promise<Need> {
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
export async function tooSmall(ctx: StageContext, size: number, tree: TreeScan, devices: number, mkdirs: number, mkfsArgs: string[]): Promise<InputError> {
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
export async function checkFreeSpace(outDir: string, output: string, need: Need, extra: number): Promise<number> {
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
export function noSpaceIn(e: unknown, outDir: string): 'ENOSPC' | 'EDQUOT' | undefined {
  if (isImageFull(e)) return undefined;
  const f = findNoSpace(e);
  if (!f || elsewhere(f.path, outDir)) return undefined;
  return f.code;
}

/** `path` is known and lies outside `dir`. */
export function elsewhere(path: string | undefined, dir: string): boolean {
  if (path === undefined) return false;
  const rel = relative(dir, resolve(path));
  return rel.startsWith('..') || rel.startsWith('/');
}

/** The image itself is full (our estimate was short): mke2fs -d / debugfs / cp say so. */
export function isImageFull(e: unknown): boolean {
  const text = `${errorMessage(e)}\n${(e as { stderr?: unknown } | undefined)?.stderr ?? ''}`;
  return /Could not allocate (block|inode) in ext2 filesystem/.test(text) || (e as { imageFull?: boolean } | undefined)?.imageFull === true;
}

