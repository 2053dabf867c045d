// sha256 of files, remembered by identity: a file whose device, inode, size, mtime and ctime (to
// the nanosecond, through `stat`, so a re-pointed symlink is another file) are the ones it had
// when it was hashed has the same bytes. ctime cannot be set from user space: any write,
// truncation or replacement changes it. A file changed in the same clock tick as it was hashed
// could keep its timestamps, so a hash is kept only when the file was last changed well before
// (racyMs) and its identity is the same before and after reading it (as git does with its racy
// index entries). The record is `<cache>/probes/file-hashes.json`, read once per run and written
// at its end, with a checksum of its own: a damaged record is not used. Best effort both ways:
// without it every file is hashed, as before. It keeps the most recently used MAX_ENTRIES files.
import { mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { tempPathFor } from './atomic.js';
import { hashValue, sha256File } from './hash.js';

const RECORD_VERSION = 1;
/** racyMs: a file changed less than this before it was hashed is not trusted to show a later change (tests lower it). */
export const fileHashSettings = { racyMs: 2000 };
const MAX_ENTRIES = 4096;

interface Entry {
  id: string;
  sha256: string;
  used: number;
}

async function identityOf(path: string): Promise<{ id: string; changedMs: number } | undefined> {
  try {
    const st = await stat(path, { bigint: true });
    if (!st.isFile()) return undefined;
    return { id: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`, changedMs: Math.max(Number(st.mtimeMs), Number(st.ctimeMs)) };
  } catch {
    return undefined;
  }
}

export class FileHashes {
  private entries: Promise<Map<string, Entry>> | undefined;
  private dirty = false;

  constructor(private readonly file: string) {}

  private load(): Promise<Map<string, Entry>> {
    return (this.entries ??= readFile(this.file, 'utf8').then(
      (text) => {
        const r = JSON.parse(text) as { v?: unknown; sum?: unknown; entries?: [string, Entry][] };
        if (r.v !== RECORD_VERSION || !Array.isArray(r.entries) || r.sum !== hashValue(r.entries)) return new Map<string, Entry>();
        return new Map(r.entries);
      },
      () => new Map<string, Entry>(),
    ).catch(() => new Map<string, Entry>()));
  }

  /** The sha256 of `path`: remembered while the file keeps its identity, else read. */
  async sha256(path: string): Promise<string> {
    const [entries, before] = await Promise.all([this.load(), identityOf(path)]);
    const kept = entries.get(path);
    const now = Date.now();
    if (kept && before && kept.id === before.id) {
      // The last use is written back at most hourly: a no-op run does not rewrite the record.
      if (now - kept.used > 3600_000) {
        kept.used = now;
        this.dirty = true;
      }
      return kept.sha256;
    }
    const sha256 = await sha256File(path);
    const after = await identityOf(path);
    if (before && after && before.id === after.id && before.changedMs < now - fileHashSettings.racyMs) {
      entries.set(path, { id: before.id, sha256, used: now });
      this.dirty = true;
    } else if (kept) {
      entries.delete(path);
      this.dirty = true;
    }
    return sha256;
  }

  /** Write the record (at the end of a run). Never fails: an unwritable cache only costs hashing. */
  async save(): Promise<void> {
    if (!this.dirty || !this.entries) return;
    this.dirty = false;
    try {
      const entries = [...(await this.entries)].sort((a, b) => b[1].used - a[1].used).slice(0, MAX_ENTRIES);
      await mkdir(dirname(this.file), { recursive: true });
      const tmp = tempPathFor(this.file);
      try {
        await writeFile(tmp, JSON.stringify({ v: RECORD_VERSION, sum: hashValue(entries), entries }));
        await rename(tmp, this.file);
      } finally {
        await rm(tmp, { force: true });
      }
    } catch {
      // a full or read-only cache: the next run hashes again
    }
  }
}
