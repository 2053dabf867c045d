// Sparse files: where a file has data (its FIEMAP extents, through filefrag, when it has holes),
// whether two files have the same content reading only where either has data, and writing a
// buffer without its all-zero blocks, so that a copy keeps the holes. A 1 GiB image with 35 MB of
// data costs 35 MB to compare or copy, not 1 GiB.
import { stat, type FileHandle, open } from 'node:fs/promises';
import type { StageContext } from '../core/context.js';
import { abortError } from '../core/errors.js';
import { dataRanges } from './e2fs.js';

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
