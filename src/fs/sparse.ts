// Sparse files (images): where a file has data (its FIEMAP extents, through filefrag), its sha256
// without reading its holes, whether two files have the same content reading only where either
// has data, and writing a buffer without its all-zero blocks, so that a copy keeps the holes. A
// 1 GiB image with 35 MB of data costs 35 MB to hash, compare or copy, not 1 GiB.
import { createHash } from 'node:crypto';
import { stat, type FileHandle, open } from 'node:fs/promises';
import type { StageContext } from '../core/context.js';
import { abortError, DomuError } from '../core/errors.js';
import { ExecError, run, type ExecEnv } from '../core/exec.js';

/**
 * Data ranges [start, end) in bytes of a file, from FIEMAP (`filefrag -s -v`: the file is synced
 * first, so no dirty page hides behind a hole or an unwritten extent). Undefined when the file
 * system has no FIEMAP (tmpfs, NFS…) or the output cannot be read.
 */
export async function dataRanges(env: ExecEnv, path: string, size: number): Promise<[number, number][] | undefined> {
  let r;
  try {
    r = await run(env, 'filefrag', ['-s', '-v', path], { quiet: true, okExitCodes: [0, 1] });
  } catch (e) {
    if (e instanceof ExecError || (e instanceof DomuError && /program not found/.test(e.message))) return undefined;
    throw e;
  }
  if (r.exitCode !== 0 || /unsupported/i.test(r.stderr + r.stdout)) return undefined;
  const unit = /\(\d+ blocks of (\d+) bytes\)/.exec(r.stdout);
  const count = /: (\d+) extents? found/.exec(r.stdout);
  if (!unit || !count) return undefined;
  const bs = Number(unit[1]);
  const ranges: [number, number][] = [];
  for (const line of r.stdout.split('\n')) {
    const m = /^\s*\d+:\s+(\d+)\.\.\s*(\d+):/.exec(line);
    if (!m) continue;
    const start = Number(m[1]) * bs;
    const end = Math.min(size, (Number(m[2]) + 1) * bs);
    if (end > start) ranges.push([start, end]);
  }
  if (ranges.length < Math.min(Number(count[1]), 1)) return undefined;
  ranges.sort((a, b) => a[0] - b[0]);
  const merged: [number, number][] = [];
  for (const [s, e] of ranges) {
    const last = merged[merged.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else merged.push([s, e]);
  }
  return merged;
}

const ZEROS = Buffer.alloc(1 << 20);

/**
 * sha256 of a (sparse) file: the data ranges are read, the holes hashed as zeros without reading
 * them (reading a hole costs the kernel a zeroed page each). Falls back to reading everything
 * where FIEMAP is unavailable. Same result as `sha256sum`.
 */
export async function sha256Sparse(env: ExecEnv, path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const ranges = (await dataRanges(env, path, size)) ?? [[0, size] as [number, number]];
    const h = createHash('sha256');
    const buf = Buffer.alloc(4 << 20);
    const zeros = (n: number) => {
      for (; n > 0; n -= ZEROS.length) h.update(n >= ZEROS.length ? ZEROS : ZEROS.subarray(0, n));
    };
    let pos = 0;
    for (const [s, e] of ranges) {
      zeros(s - pos);
      for (pos = s; pos < e; ) {
        const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, e - pos), pos);
        if (bytesRead === 0) throw new DomuError(`${path}: unexpected end of file at ${pos}`);
        h.update(buf.subarray(0, bytesRead));
        pos += bytesRead;
      }
      if (env.signal.aborted) throw abortError(env.signal);
    }
    zeros(size - pos);
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

export const CHUNK = 4 << 20;
export const BLOCK = 4096;
const ZERO_BLOCK = Buffer.alloc(BLOCK);

/** Where `path` (of `size` bytes) has data: its FIEMAP extents when it has holes, else all of it. */
export async function dataOf(ctx: StageContext, path: string, size: number): Promise<[number, number][]> {
  const st = await stat(path);
  const ranges = st.blocks * 512 < size ? await dataRanges(ctx, path, size) : undefined;
  return ranges ?? (size > 0 ? [[0, size]] : []);
}

/**
 * Whether two files of `size` bytes have the same content. Only where either has data is read:
 * elsewhere both are holes, hence zeros (a 1 GiB image with 35 MB of data costs 35 MB, not 1 GiB).
 */
export async function sameContent(ctx: StageContext, a: string, b: string, size: number): Promise<boolean> {
  const all = [...(await dataOf(ctx, a, size)), ...(await dataOf(ctx, b, size))].sort((x, y) => x[0] - y[0]);
  const ranges: [number, number][] = [];
  for (const [s, e] of all) {
    const last = ranges[ranges.length - 1];
    if (last && s <= last[1]) last[1] = Math.max(last[1], e);
    else ranges.push([s, e]);
  }
  const [fa, fb] = [await open(a, 'r'), await open(b, 'r')];
  try {
    const [ba, bb] = [Buffer.alloc(CHUNK), Buffer.alloc(CHUNK)];
    for (const [start, end] of ranges) {
      for (let pos = start; pos < end; pos += CHUNK) {
        const n = Math.min(CHUNK, end - pos);
        const [ra, rb] = await Promise.all([fa.read(ba, 0, n, pos), fb.read(bb, 0, n, pos)]);
        if (ra.bytesRead !== n || rb.bytesRead !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
        if (ctx.signal.aborted) throw abortError(ctx.signal);
      }
    }
    return true;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/** Write the runs of `data` that are not all-zero 4 KiB blocks, at file offset `pos`. */
export async function writeNonZero(fh: FileHandle, data: Buffer, pos: number): Promise<void> {
  const put = async (from: number, to: number) => {
    for (let off = from; off < to; ) off += (await fh.write(data, off, to - off, pos + off)).bytesWritten;
  };
  let runStart = -1;
  for (let off = 0; off < data.length; off += BLOCK) {
    const end = Math.min(off + BLOCK, data.length);
    const zero = data.subarray(off, end).equals(ZERO_BLOCK.subarray(0, end - off));
    if (!zero && runStart < 0) runStart = off;
    else if (zero && runStart >= 0) {
      await put(runStart, off);
      runStart = -1;
    }
  }
  if (runStart >= 0) await put(runStart, data.length);
}
