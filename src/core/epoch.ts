// SOURCE_DATE_EPOCH: the one timestamp a reproducible build uses for everything it writes.
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from './errors.js';

/** The newest mtime (whole seconds) of anything in a tree: for a release tree, its release date. */
export async function newestMtime(dir: string): Promise<number> {
  let newest = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const st = await lstat(p);
      newest = Math.max(newest, Math.floor(st.mtimeMs / 1000));
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return newest;
}

/** Parse a SOURCE_DATE_EPOCH given by the user (flag or environment). */
export function parseEpoch(text: string, from: string): number {
  if (!/^\d{1,12}$/.test(text.trim())) throw new InputError(`${from} ${JSON.stringify(text)}: expected whole seconds since 1970 (e.g. 1700000000)`);
  return Number(text.trim());
}
