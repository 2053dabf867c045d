// Our own writer of cpio "newc" archives (the format the kernel unpacks as an initramfs), gzip
// compressed through node:zlib. Written here rather than through cpio(1) or gen_init_cpio so that
// no host metadata can leak in and device nodes need no mknod (so no root): every header field
// comes from the entry list and the caller's mtime.
//
// Record: 110-byte ASCII header ("070701" + 13 fields of 8 hex digits), the name with its NUL
// padded to a multiple of 4 (counting the header), the data padded to a multiple of 4; the
// archive ends with a record named TRAILER!!!.
//
// Deterministic: entries sorted by path component (a parent before its children), missing parent
// directories added (0755), inode numbers 1, 2, 3… in that order, uid/gid 0, one mtime for all,
// nlink 2 for directories and 1 for everything else (no hard links). zlib's gzip header carries
// mtime 0 and no file name, so two runs give the same bytes.
import { createWriteStream } from 'node:fs';
import { lstat, readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { DomuError, errorMessage } from '../core/errors.js';

export type CpioEntry =
  | { type: 'dir'; path: string; mode?: number }
  /** A regular file whose data is `data`, or the content of the host file `source` (read once). */
  | { type: 'file'; path: string; mode?: number; data: Uint8Array }
  | { type: 'file'; path: string; mode?: number; source: string }
  | { type: 'symlink'; path: string; target: string }
  | { type: 'char' | 'block'; path: string; mode?: number; major: number; minor: number };

export interface CpioOptions {
  /** The one modification time of every entry (seconds since 1970, e.g. SOURCE_DATE_EPOCH). */
  mtime: number;
}

const S_IFMT = {
  dir: 0o040000,
  file: 0o100000,
  symlink: 0o120000,
  char: 0o020000,
  block: 0o060000,
} as const;

const DEFAULT_MODE = { dir: 0o755, file: 0o644, symlink: 0o777, char: 0o600, block: 0o600 } as const;

const MAX_U32 = 0xffffffff;
/** Longest name the kernel's initramfs unpacker accepts (PATH_MAX, with the NUL). */
const MAX_NAME = 4095;
const TRAILER = 'TRAILER!!!';

/** An entry after validation, with parents added and modes resolved. */
interface Planned {
  entry: CpioEntry;
  parts: string[];
  mode: number;
}

function bad(path: string, why: string): DomuError {
  return new DomuError(`cpio entry ${JSON.stringify(path)}: ${why}`, { hint: 'entry names are relative paths such as bin/busybox, without "..", "." or empty components' });
}

/** Check a name and split it into components; a bad name throws naming it and why. */
export function cpioPathParts(path: string): string[] {
  if (path === '') throw bad(path, 'empty name');
  if (path.startsWith('/')) throw bad(path, 'absolute name');
  if (path.includes('\0')) throw bad(path, 'NUL in the name');
  if (Buffer.byteLength(path) > MAX_NAME) throw bad(path, `name longer than ${MAX_NAME} bytes`);
  const parts = path.split('/');
  for (const p of parts) {
    if (p === '') throw bad(path, 'empty component (a doubled or trailing "/")');
    if (p === '.' || p === '..') throw bad(path, `"${p}" component`);
  }
  if (parts[0] === TRAILER && parts.length === 1) throw bad(path, 'reserved name (it ends an archive)');
  return parts;
}

function checkU32(path: string, what: string, v: number): void {
  if (!Number.isInteger(v) || v < 0 || v > MAX_U32) throw bad(path, `${what} ${v} is not an integer in 0..${MAX_U32}`);
}

function compareParts(a: readonly string[], b: readonly string[]): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = Buffer.compare(Buffer.from(a[i]!), Buffer.from(b[i]!));
    if (x !== 0) return x;
  }
  return a.length - b.length;
}

/** Validate, add missing parent directories, and sort (parents first). Nothing is read yet. */
function plan(entries: readonly CpioEntry[], opts: CpioOptions): Planned[] {
  checkU32('(archive)', 'mtime', opts.mtime);
  const byPath = new Map<string, Planned>();
  for (const entry of entries) {
    const parts = cpioPathParts(entry.path);
    const key = parts.join('/');
    if (byPath.has(key)) throw bad(entry.path, 'listed twice');
    const mode = entry.type === 'symlink' ? DEFAULT_MODE.symlink : (entry.mode ?? DEFAULT_MODE[entry.type]);
    if (!Number.isInteger(mode) || mode < 0 || mode > 0o7777) throw bad(entry.path, `mode 0${mode.toString(8)} is not a permission mode (0..07777)`);
    if (entry.type === 'char' || entry.type === 'block') {
      checkU32(entry.path, 'major', entry.major);
      checkU32(entry.path, 'minor', entry.minor);
    }
    if (entry.type === 'symlink' && (entry.target === '' || entry.target.includes('\0'))) throw bad(entry.path, 'symlink target is empty or has a NUL');
    byPath.set(key, { entry, parts, mode });
  }
  for (const p of [...byPath.values()]) {
    for (let i = 1; i < p.parts.length; i++) {
      const parent = p.parts.slice(0, i).join('/');
      const have = byPath.get(parent);
      if (!have) byPath.set(parent, { entry: { type: 'dir', path: parent }, parts: p.parts.slice(0, i), mode: DEFAULT_MODE.dir });
      else if (have.entry.type !== 'dir') throw bad(p.entry.path, `its parent ${parent} is a ${have.entry.type}, not a directory`);
    }
  }
  return [...byPath.values()].sort((a, b) => compareParts(a.parts, b.parts));
}

function hex8(v: number): string {
  return v.toString(16).padStart(8, '0');
}

const pad4 = (n: number): number => (4 - (n % 4)) % 4;

/** One newc record: header, name (NUL-terminated, padded), data (padded). */
function record(name: string, fields: { ino: number; mode: number; nlink: number; mtime: number; rdevmajor: number; rdevminor: number }, data: Uint8Array): Buffer {
  if (data.length > MAX_U32) throw bad(name, `${data.length} bytes is more than a newc record can hold`);
  const nameBytes = Buffer.from(`${name}\0`);
  const header =
    '070701' +
    [
      fields.ino,
      fields.mode,
      0, // uid
      0, // gid
      fields.nlink,
      fields.mtime,
      data.length,
      0, // devmajor: the archive's own "file system"; meaningless here, so fixed
      0, // devminor
      fields.rdevmajor,
      fields.rdevminor,
      nameBytes.length,
      0, // check: only the "070702" CRC format uses it
    ]
      .map(hex8)
      .join('');
  return Buffer.concat([Buffer.from(header, 'latin1'), nameBytes, Buffer.alloc(pad4(110 + nameBytes.length)), data, Buffer.alloc(pad4(data.length))]);
}

async function fileData(p: Planned): Promise<Uint8Array> {
  const e = p.entry;
  if (e.type === 'symlink') return Buffer.from(e.target);
  if (e.type !== 'file') return new Uint8Array(0);
  if ('data' in e) return e.data;
  let st;
  try {
    st = await lstat(e.source);
  } catch (err) {
    throw new DomuError(`cpio entry ${e.path}: cannot read ${e.source}: ${errorMessage(err)}`, { cause: err });
  }
  if (!st.isFile()) throw new DomuError(`cpio entry ${e.path}: ${e.source} is not a regular file`);
  return readFile(e.source);
}

/** The records of an archive, in order, ending with the trailer. Every entry is validated before the first record. */
export function cpioRecords(entries: readonly CpioEntry[], opts: CpioOptions): AsyncGenerator<Buffer> {
  return records(plan(entries, opts), opts.mtime);
}

async function* records(planned: readonly Planned[], mtime: number): AsyncGenerator<Buffer> {
  let ino = 0;
  for (const p of planned) {
    ino += 1;
    const e = p.entry;
    const dev = e.type === 'char' || e.type === 'block' ? e : undefined;
    yield record(
      p.parts.join('/'),
      { ino, mode: S_IFMT[e.type] | p.mode, nlink: e.type === 'dir' ? 2 : 1, mtime, rdevmajor: dev?.major ?? 0, rdevminor: dev?.minor ?? 0 },
      await fileData(p),
    );
  }
  yield record(TRAILER, { ino: 0, mode: 0, nlink: 1, mtime: 0, rdevmajor: 0, rdevminor: 0 }, new Uint8Array(0));
}

/** The whole uncompressed archive in memory (small archives, tests). */
export async function cpioArchive(entries: readonly CpioEntry[], opts: CpioOptions): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of cpioRecords(entries, opts)) chunks.push(c);
  return Buffer.concat(chunks);
}

/**
 * Write the gzip-compressed archive to `path` (the caller makes it atomic: temp + rename). Level 9:
 * written once, read at every boot. Bad entries throw before the file is created.
 * Returns the number of records (parents added, trailer not counted) and the uncompressed size.
 */
export async function writeCpioGzip(path: string, entries: readonly CpioEntry[], opts: CpioOptions): Promise<{ entries: number; uncompressed: number }> {
  const planned = plan(entries, opts);
  let uncompressed = 0;
  const counted = async function* () {
    for await (const c of records(planned, opts.mtime)) {
      uncompressed += c.length;
      yield c;
    }
  };
  await pipeline(Readable.from(counted()), createGzip({ level: 9 }), createWriteStream(path, { mode: 0o644 }));
  return { entries: planned.length, uncompressed };
}
