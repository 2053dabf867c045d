// How big a file a directory's file system can hold, asked of that file system itself: a
// temporary file there is grown (ftruncate, sparse: nothing is written) to the size in question.
// The kernel refuses a size above the file system's limit (ext4 with 4 KiB blocks: 16 TiB - 4 KiB)
// or this process's `ulimit -f` with EFBIG before doing anything, so the probe is the truth for
// every file system, block size and mount, and costs a few system calls. When the size does not
// fit, the biggest size that does is bisected the same way (about 45 more ftruncates).
//
// The temporary file is registered (cleanup registry and run journal) before it exists, so not
// even a SIGKILL leaves it behind. On a file system without sparse files (vfat: growing a file
// writes zeros) nothing big is probed: a table gives the limit there, or the check is skipped.
import { readFileSync } from 'node:fs';
import { open, rm, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { tempPathFor } from './atomic.js';
import { errorMessage, InputError } from './errors.js';
import type { Logger } from './log.js';
import { mountOf } from './mounts.js';
import { formatSize } from './size.js';

export interface FileSizeProbe {
  /** The size fits; false only when the file system (or `ulimit -f`) refused it. */
  fits: boolean;
  /** When it does not fit: the biggest size that does (undefined: unknown). */
  limit?: number | undefined;
  /** The probe could not tell (no sparse files there, an error): why. Counts as fitting. */
  skipped?: string;
}

/** The first, small step: also tells whether the file system keeps a grown file sparse. */
const FIRST_STEP = 1024 * 1024;

/** File systems without sparse files (growing a file writes zeros), and the biggest file they hold. */
const NOT_SPARSE_LIMITS: Record<string, number> = { vfat: 2 ** 32 - 1, msdos: 2 ** 32 - 1 };

/**
 * Whether `dir`'s file system can hold a file of `size` bytes. `register` records the temporary
 * path for cleanup (before it exists) and returns the function that drops the record.
 */
export async function probeFileSize(dir: string, size: number, register: (path: string) => () => void): Promise<FileSizeProbe> {
  const tmp = tempPathFor(join(dir, '.domu-size-probe'));
  const release = register(tmp);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'wx', 0o600);
    const f = fh;
    /** Grow (or shrink) the file to `n`: false on EFBIG. */
    const grow = async (n: number): Promise<boolean> => {
      try {
        await f.truncate(n);
        return true;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'EFBIG') return false;
        throw e;
      }
    };
    const first = Math.min(size, FIRST_STEP);
    if (!(await grow(first))) return { fits: false, limit: await bisect(grow, 0, first) };
    if ((await f.stat()).blocks * 512 >= first / 2) {
      const type = mountOf(dir)?.type;
      const known = type === undefined ? undefined : NOT_SPARSE_LIMITS[type];
      if (known === undefined) return { fits: true, skipped: `the file system of ${dir} (${type ?? 'unknown type'}) keeps no sparse files; not probed` };
      return size <= known ? { fits: true } : { fits: false, limit: known };
    }
    if (size === first || (await grow(size))) return { fits: true };
    return { fits: false, limit: await bisect(grow, first, size) };
  } catch (e) {
    return { fits: true, skipped: errorMessage(e) };
  } finally {
    await fh?.close().catch(() => undefined);
    // Dropped from the cleanup only once it is gone; else the run's cleanup (or the next run) retries.
    await rm(tmp, { force: true }).then(release, () => undefined);
  }
}

/** The biggest n in [lo, hi) that `grow` takes, given that lo fits and hi does not; undefined on an error. */
async function bisect(grow: (n: number) => Promise<boolean>, lo: number, hi: number): Promise<number | undefined> {
  try {
    while (hi - lo > 1) {
      const mid = lo + Math.floor((hi - lo) / 2);
      if (await grow(mid)) lo = mid;
      else hi = mid;
    }
    return lo;
  } catch {
    return undefined;
  }
}

export interface ImageFitsInput {
  /** The directory the image goes into (--out, or the store's top). */
  dir: string;
  /** image.size in bytes. */
  size: number;
  where: 'out' | 'store';
  register: (path: string) => () => void;
  log?: Logger | undefined;
}

/** Before any stage: an InputError (exit 2) when `dir` cannot hold an image of `size` bytes. */
export async function checkImageFits(i: ImageFitsInput): Promise<void> {
  const p = await probeFileSize(i.dir, i.size, i.register);
  if (p.skipped) i.log?.debug(`the file size check of ${i.dir} was skipped: ${p.skipped}`);
  if (p.fits) return;
  throw new InputError(imageTooBigMessage({ size: i.size, dir: i.dir, where: i.where, limit: p.limit, rlimit: fileSizeRlimit(), type: mountOf(i.dir)?.type }));
}

/** The one line for an image.size that the file system (or `ulimit -f`) cannot hold. */
export function imageTooBigMessage(i: { size: number; dir: string; where: 'out' | 'store'; limit: number | undefined; rlimit: number | undefined; type: string | undefined }): string {
  const below = i.limit === undefined ? undefined : roundBelow(i.limit);
  const eg = below === undefined ? '' : ` (e.g. --set image.size=${below})`;
  if (i.rlimit !== undefined && i.size > i.rlimit && (i.limit === undefined || i.limit >= i.rlimit)) {
    return `image.size ${exactSize(i.size)} is larger than the biggest file this process may write (ulimit -f: ${exactSize(i.rlimit)}); raise the limit (ulimit -f unlimited) or choose a smaller image.size${eg}`;
  }
  const place = i.where === 'store' ? `the store ${i.dir}` : i.dir;
  const other = i.where === 'store' ? 'a store on a file system that holds bigger files' : 'an --out on a file system that holds bigger files';
  return `image.size ${exactSize(i.size)} is larger than the biggest file ${place}${i.type ? ` (${i.type})` : ''} can hold${i.limit === undefined ? '' : ` (${exactSize(i.limit)})`}; choose a smaller image.size${eg} or ${other}`;
}

/** The biggest whole number of T, G or M at most `limit`, as image.size takes it; undefined below 16M. */
function roundBelow(limit: number): string | undefined {
  for (const u of [2 ** 40, 2 ** 30, 2 ** 20]) {
    const v = Math.floor(limit / u) * u;
    if (v >= 16 * 2 ** 20) return formatSize(v);
  }
  return undefined;
}

/** This process's soft RLIMIT_FSIZE (`ulimit -f`) in bytes; undefined when unlimited or unknown. */
export function fileSizeRlimit(): number | undefined {
  try {
    const m = /^Max file size\s+(\d+|unlimited)\s/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

const EXACT_UNITS: [string, number][] = [
  ['PiB', 2 ** 50],
  ['TiB', 2 ** 40],
  ['GiB', 2 ** 30],
  ['MiB', 2 ** 20],
  ['KiB', 2 ** 10],
];

/** A size in whole binary units (`16 TiB`), or just below one (`16 TiB - 4 KiB`, `4 GiB - 1 byte`); else rounded (`1.5 GiB`). */
export function exactSize(bytes: number): string {
  for (const [name, u] of EXACT_UNITS) {
    if (bytes < u) continue;
    if (bytes % u === 0) return `${bytes / u} ${name}`;
    const gap = Math.ceil(bytes / u) * u - bytes;
    if (gap * 1024 <= u) {
      const g = exactSize(gap);
      if (!g.includes('.')) return `${exactSize(bytes + gap)} - ${g}`;
    }
  }
  if (bytes < 1024) return `${bytes} byte${bytes === 1 ? '' : 's'}`;
  const [name, u] = EXACT_UNITS.find(([, v]) => bytes >= v)!;
  return `${(bytes / u).toFixed(1)} ${name}`;
}
