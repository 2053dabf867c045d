// Atomic files and directories: write under a temporary name beside the target, then rename.
// A crash leaves only a `.tmp-*` name, which is never trusted and is swept later.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { activeJournal } from './journal.js';
import { isTempName, TEMP_MARK } from './tempname.js';

export { isTempName, TEMP_MARK };

/** A fresh temporary path in the same directory as `target` (same file system, so rename is atomic). */
export function tempPathFor(target: string): string {
  // The run's journal notes the directory, so that a SIGKILLed run's temps are removed by the next.
  activeJournal()?.noteTempDir(dirname(target));
  return join(dirname(target), `${TEMP_MARK}${basename(target)}-${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Write `target` through a temporary file and a rename: readers see the old or the new content,
 * never a part. `flush` (default) also fsyncs the data before the rename, so a crash of the
 * machine cannot leave an empty file behind the new name; files that are regenerated at will
 * (the --out tree) skip it, because thousands of fsyncs dominate the run.
 */
export async function writeFileAtomic(target: string, data: string | Uint8Array, mode = 0o644, opts: { flush?: boolean } = {}): Promise<void> {
  await mkdir(dirname(target), { recursive: true });
  const tmp = tempPathFor(target);
  try {
    await writeFile(tmp, data, { mode, flush: opts.flush ?? true });
    await rename(tmp, target);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * Move a finished temporary directory into place. If `target` already exists (another process
 * produced the same content-addressed entry first), keep theirs and drop ours.
 * Returns true when ours was installed.
 */
export async function renameDirInto(tmp: string, target: string): Promise<boolean> {
  await mkdir(dirname(target), { recursive: true });
  try {
    await rename(tmp, target);
    return true;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST') {
      await rm(tmp, { recursive: true, force: true });
      return false;
    }
    throw e;
  }
}

/** Remove leftover temporaries (from crashed runs) older than `maxAgeMs` in `dir`. */
export async function sweepTemps(dir: string, olderThanMs = 24 * 3600_000): Promise<void> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  const now = Date.now();
  for (const n of names) {
    if (!isTempName(n)) continue;
    const p = join(dir, n);
    try {
      const st = await stat(p);
      if (now - st.mtimeMs > olderThanMs) await rm(p, { recursive: true, force: true });
    } catch {
      /* gone already */
    }
  }
}
