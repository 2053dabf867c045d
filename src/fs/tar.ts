// Safe, streaming tar extraction (design.md, "extract").
// tar-stream parses; bzip2 goes through a native `bzip2 -dc` child when there is one (fast),
// unbzip2-stream otherwise; gzip through node:zlib; plain tar is read as is.
// Refused, with an error naming the archive and the entry: absolute paths, `..` components,
// symlinks whose target leaves the tree (checked again at the end, through the final set of
// links), hardlinks to anything but an earlier entry, device/FIFO/unknown entries, paths that
// pass through an extracted symlink, and (when stripping) more than one top directory.
// Everything is written into a temporary directory beside `dest`, renamed into place at the end;
// on any failure the temporary directory is removed and the decompressor child killed.
import {
  closeSync,
  constants as fsc,
  createReadStream,
  fchmodSync,
  futimesSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  chmodSync,
  symlinkSync,
  unlinkSync,
  utimesSync,
  writeSync,
  writevSync,
} from 'node:fs';
import { lstat, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { setImmediate as yieldToIo } from 'node:timers/promises';
import { createGunzip } from 'node:zlib';
import { extract as tarExtract, type Header } from 'tar-stream';
import unbzip2 from 'unbzip2-stream';
import { tempPathFor } from '../core/atomic.js';
import { abortError, AbortedError, DomuError, errorMessage } from '../core/errors.js';
import { ExecError, spawnStream, which, type ExecEnv, type StreamChild } from '../core/exec.js';

export type Decompressor = 'native' | 'js';

export interface SafeExtractOptions {
  archive: string;
  /** The directory to create; must not exist. */
  dest: string;
  env: ExecEnv;
  /** bzip2: 'auto' (default) uses a `bzip2 -dc` child when bzip2 is on PATH, 'js' forces unbzip2-stream. */
  decompressor?: 'auto' | Decompressor;
  /** Leading path components removed from every entry (default 1: the top directory). */
  stripComponents?: number;
  /** Called as the decompressed tar stream is consumed, with the byte count so far. */
  onProgress?: (bytesOut: number) => void;
}

export interface SafeExtractResult {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  /** Bytes of file content written. */
  bytes: number;
  /** 'native' when a decompressor child ran; 'js' when everything ran in this process. */
  decompressor: Decompressor;
}

type Compression = 'bzip2' | 'gzip' | 'none';

/** What we use of tar-stream's entry stream (a streamx Readable). */
interface EntryStream {
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  on(event: 'error', listener: (err: unknown) => void): unknown;
  resume(): unknown;
}

/** Files are buffered up to this size and written with one call; larger ones are written as they come. */
const FLUSH_BYTES = 1 << 20;
const MAX_LINK_DEPTH = 40;

export async function safeExtract(opts: SafeExtractOptions): Promise<SafeExtractResult> {
  const { archive, dest, env } = opts;
  const label = basename(archive);
  const strip = opts.stripComponents ?? 1;
  if (!Number.isInteger(strip) || strip < 0) throw new DomuError(`stripComponents must be a non-negative integer (got ${strip})`);
  if (env.signal.aborted) throw abortError(env.signal);
  if (await pathExists(dest)) throw new DomuError(`${label}: cannot extract into ${dest}: it already exists`);

  const compression = await sniff(archive, label);
  let decompressor: Decompressor = 'js';
  if (compression === 'bzip2') {
    const want = opts.decompressor ?? 'auto';
    decompressor = want === 'js' ? 'js' : want === 'native' || (await which('bzip2')) ? 'native' : 'js';
  }
  env.log.debug(`extract ${archive} (${compression}${compression === 'bzip2' ? `, ${decompressor}` : ''}) -> ${dest}`);

  const tmp = tempPathFor(dest);
  await mkdir(tmp, { mode: 0o700 });
  let child: StreamChild | undefined;
  try {
    let source: Readable;
    if (compression === 'bzip2' && decompressor === 'native') {
      child = spawnStream(env, 'bzip2', ['-dc', '--', archive]);
      source = child.stdout;
    } else {
      source = jsSource(archive, compression);
    }
    const writer = new TreeWriter(tmp, label, strip);
    await parse(source, writer, env, opts.onProgress, child);
    writer.finish();
    if (env.signal.aborted) throw abortError(env.signal);
    if (await pathExists(dest)) throw new DomuError(`${label}: cannot extract into ${dest}: it appeared while extracting`);
    await rename(tmp, dest);
    return { ...writer.counts, decompressor };
  } catch (e) {
    if (child) {
      child.kill();
      await child.exit.catch(() => undefined); // gone before we return, not merely signalled
    }
    await rm(tmp, { recursive: true, force: true });
    if (env.signal.aborted && !(e instanceof AbortedError)) throw abortError(env.signal);
    throw explain(e, label, compression);
  }
}

// ---------------------------------------------------------------------------------------------
// Input side

async function pathExists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

async function sniff(archive: string, label: string): Promise<Compression> {
  let head: Buffer;
  try {
    const fh = await open(archive, 'r');
    try {
      head = Buffer.alloc(512);
      const { bytesRead } = await fh.read(head, 0, 512, 0);
      head = head.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  } catch (e) {
    throw new DomuError(`${label}: cannot read ${archive}: ${errorMessage(e)}`);
  }
  if (head.length >= 4 && head.toString('latin1', 0, 3) === 'BZh' && head[3]! >= 0x31 && head[3]! <= 0x39) return 'bzip2';
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length === 512 && head.toString('latin1', 257, 262) === 'ustar') return 'none';
  if (head.length >= 6 && head.subarray(0, 6).equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) {
    throw new DomuError(`${label}: xz-compressed archives are not supported (bzip2, gzip or plain tar)`);
  }
  throw new DomuError(`${label}: not a tar archive (expected bzip2, gzip or plain tar)`);
}

/** Marks errors raised by the decompressor (as opposed to the tar parser or the file system). */
class DecompressError extends Error {}

function jsSource(archive: string, compression: Compression): Readable {
  const file = createReadStream(archive, { highWaterMark: 1 << 20 });
  if (compression === 'none') return file;
  // unbzip2-stream is an old-style stream: consume it through a PassThrough (facts.md).
  const out = new PassThrough({ highWaterMark: 1 << 20 });
  const fail = (e: unknown) => out.destroy(new DecompressError(errorMessage(e)));
  const decoder: NodeJS.ReadWriteStream = compression === 'bzip2' ? unbzip2() : createGunzip();
  file.on('error', (e) => out.destroy(e));
  decoder.on('error', fail);
  file.pipe(decoder).pipe(out);
  out.on('close', () => {
    file.destroy();
    (decoder as { destroy?: () => void }).destroy?.();
  });
  return out;
}

/**
 * Feed the decompressed stream into tar-stream. When the tar parser fails (not our own refusal),
 * keep reading the decompressor to its end: if it fails too, that is the real cause (a truncated
 * or corrupt .bz2 usually shows up first as garbage or a short tar stream).
 */
async function parse(source: Readable, writer: TreeWriter, env: ExecEnv, onProgress: ((n: number) => void) | undefined, child: StreamChild | undefined): Promise<void> {
  const ex = tarExtract();
  const inbox = new Inbox(source);
  let refusal: unknown; // our own error (refusal, file system): stop at once
  let tarError: unknown; // the parser's error: find out whether the decompressor is to blame
  let settle: (() => void) | undefined;
  const wake = () => {
    const s = settle;
    settle = undefined;
    s?.();
  };
  ex.on('entry', (header, source, next) => {
    const stream = source as unknown as EntryStream;
    // Destroying the parser destroys the entry's stream with the same error: not a second failure.
    stream.on('error', () => undefined);
    try {
      writer.entry(header, stream, (err?: unknown) => {
        if (err === undefined) next();
        else {
          refusal ??= err;
          ex.destroy(err as Error);
          inbox.stop();
        }
      });
    } catch (e) {
      refusal ??= e;
      stream.resume();
      ex.destroy(e as Error);
      inbox.stop();
    }
  });
  ex.on('error', (e: unknown) => {
    if (refusal === undefined) tarError ??= e;
    wake();
  });
  let needDrain = false;
  let finished = false;
  ex.on('drain', () => {
    needDrain = false;
    wake();
  });
  ex.on('finish', () => {
    finished = true;
    wake();
  });
  ex.on('close', wake);
  const onAbort = () => {
    child?.kill();
    ex.destroy(abortError(env.signal));
    inbox.stop();
    wake();
  };
  env.signal.addEventListener('abort', onAbort, { once: true });
  const waitFor = () => new Promise<void>((res) => (settle = res));
  try {
    let bytes = 0;
    for (;;) {
      const chunk = await inbox.next();
      if (chunk === undefined) break;
      if (env.signal.aborted) throw abortError(env.signal);
      if (refusal !== undefined) throw refusal;
      if (tarError !== undefined) continue; // drain the decompressor
      bytes += chunk.length;
      onProgress?.(bytes);
      needDrain = !ex.write(chunk);
      while (needDrain && refusal === undefined && tarError === undefined && !ex.destroyed) await waitFor();
      // Let the event loop read the pipe between chunks: the child must never wait on us
      // (bzip2 cannot start on its next block before the pipe has taken all of this one).
      await yieldToIo();
    }
    if (env.signal.aborted) throw abortError(env.signal);
    if (refusal === undefined && tarError === undefined) {
      ex.end(undefined);
      while (!finished && refusal === undefined && tarError === undefined && !ex.destroyed) await waitFor();
    }
    if (refusal !== undefined) throw refusal;
    // The decompressor child must have succeeded, whatever tar-stream thought of its output.
    if (child) {
      try {
        await child.exit;
      } catch (e) {
        if (e instanceof ExecError) throw new DecompressError(errorMessage(e));
        throw e; // aborted, or bzip2 not installed
      }
    }
    if (tarError !== undefined) throw tarError;
    if (!finished) throw new Error('Unexpected end of data');
  } finally {
    env.signal.removeEventListener('abort', onAbort);
    if (!ex.destroyed) ex.destroy();
    inbox.close();
  }
}

const INBOX_HIGH = 64 << 20;
const INBOX_LOW = 16 << 20;
const COALESCE_BYTES = 64 << 10;

/**
 * Reads a stream eagerly (flowing mode) into memory, so that a decompressor child never waits on
 * a full pipe while we write files: its next block is decompressed while we work on this one.
 */
class Inbox {
  private readonly chunks: Buffer[] = [];
  private bytes = 0;
  private paused = false;
  private ended = false;
  private stopped = false;
  private error: unknown;
  private wakeup: (() => void) | undefined;

  constructor(private readonly stream: Readable) {
    stream.on('data', (c: Buffer) => {
      if (this.stopped) return;
      this.chunks.push(c);
      this.bytes += c.length;
      if (this.bytes > INBOX_HIGH && !this.paused) {
        this.paused = true;
        stream.pause();
      }
      this.wake();
    });
    stream.on('end', () => this.finish());
    stream.on('close', () => this.finish());
    stream.on('error', (e: unknown) => {
      this.error ??= e;
      this.finish();
    });
  }

  private finish(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const w = this.wakeup;
    this.wakeup = undefined;
    w?.();
  }

  /** The next chunk; undefined at the end; throws the stream's error after the chunks before it. */
  async next(): Promise<Buffer | undefined> {
    while (this.chunks.length === 0) {
      if (this.stopped) return undefined;
      if (this.error !== undefined) throw this.error;
      if (this.ended) return undefined;
      await new Promise<void>((res) => (this.wakeup = res));
    }
    // Small pipe reads (bzip2 writes 5000 bytes at a time) are handed on together, up to a
    // pipe's worth, so that we are back reading the pipe before the child has to wait.
    let c: Buffer;
    if (this.chunks.length === 1 || this.chunks[0]!.length >= COALESCE_BYTES) c = this.chunks.shift()!;
    else {
      let n = 0;
      let size = 0;
      while (n < this.chunks.length && size < COALESCE_BYTES) size += this.chunks[n++]!.length;
      c = Buffer.concat(this.chunks.splice(0, n), size);
    }
    this.bytes -= c.length;
    if (this.paused && this.bytes < INBOX_LOW) {
      this.paused = false;
      this.stream.resume();
    }
    return c;
  }

  /** Stop at once: next() answers undefined from now on. */
  stop(): void {
    this.stopped = true;
    this.chunks.length = 0;
    this.bytes = 0;
    this.finish();
  }

  close(): void {
    this.chunks.length = 0;
    if (!this.stream.destroyed) this.stream.destroy();
  }
}

/** One clear line for whatever went wrong. */
function explain(e: unknown, label: string, compression: Compression): unknown {
  if (e instanceof AbortedError) return e;
  if (e instanceof DecompressError) {
    return new DomuError(`${label}: truncated or corrupt ${compression === 'gzip' ? 'gzip' : 'bzip2'} data`, { cause: e });
  }
  if (e instanceof DomuError) return e;
  const msg = errorMessage(e);
  if (/Unexpected end of data/i.test(msg)) return new DomuError(`${label}: truncated tar data`, { cause: e });
  if (/Invalid tar header|Header exceeds max size|Invalid header/i.test(msg)) return new DomuError(`${label}: corrupt tar data (${msg})`, { cause: e });
  return new DomuError(`${label}: extraction failed: ${msg}`, { cause: e });
}

// ---------------------------------------------------------------------------------------------
// Output side: synchronous file system calls (small files dominate; one call per step is fastest).

interface DirInfo {
  mode: number;
  mtime: Date;
}

class TreeWriter {
  readonly counts = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, bytes: 0 };
  private readonly umask = currentUmask();
  private top: string[] | undefined;
  /** Entries shallower than the stripped prefix (directories), checked against `top` at the end. */
  private readonly shallow: { name: string; comps: string[] }[] = [];
  private rootInfo: { mode: number; mtime: Date } | undefined;
  /** Every directory that exists in the tree (relative paths), with archive attributes if any. */
  private readonly dirs = new Map<string, DirInfo | undefined>();
  /** Non-directories written (relative paths). */
  private readonly nondirs = new Set<string>();
  /** Symlinks, created at the end, in archive order: path → target. */
  private readonly symlinks = new Map<string, { target: string; mtime: Date; name: string }>();
  /** Hardlinks to symlinks, made after the symlinks: path → target path. */
  private readonly lateLinks: { path: string; target: string; name: string }[] = [];

  constructor(
    private readonly root: string,
    private readonly label: string,
    private readonly strip: number,
  ) {
    this.dirs.set('', undefined);
  }

  private refuse(name: string, why: string): DomuError {
    return new DomuError(`${this.label}: refusing entry ${JSON.stringify(name)}: ${why}`);
  }

  /**
   * Archive name → path relative to the tree: '' for the (stripped) top directory itself, null for
   * a directory above it (nothing to do). Throws the refusal for anything unsafe.
   */
  private relPath(name: string, isDir: boolean): string | null {
    if (name.includes('\0')) throw this.refuse(name, `NUL byte in path`);
    if (name.startsWith('/')) throw this.refuse(name, `absolute path`);
    const comps = name.split('/').filter((c) => c !== '' && c !== '.');
    if (comps.includes('..')) throw this.refuse(name, `".." in path`);
    if (comps.length === 0) {
      if (isDir) return this.strip === 0 ? '' : null; // "./"
      throw this.refuse(name, `empty path`);
    }
    if (this.strip === 0) return comps.join('/');
    if (comps.length <= this.strip && !isDir) throw this.refuse(name, `outside the top directory`);
    if (comps.length < this.strip) {
      if (this.top) this.checkTop(name, comps);
      else this.shallow.push({ name, comps });
      return null;
    }
    const head = comps.slice(0, this.strip);
    if (!this.top) {
      this.top = head;
      for (const s of this.shallow) this.checkTop(s.name, s.comps);
    } else this.checkTop(name, head);
    if (comps.length === this.strip) return '';
    return comps.slice(this.strip).join('/');
  }

  private checkTop(name: string, comps: string[]): void {
    const top = this.top!;
    for (let i = 0; i < comps.length && i < top.length; i++) {
      if (comps[i] !== top[i]) {
        throw new DomuError(
          `${this.label}: more than one top directory (${JSON.stringify(top.slice(0, i + 1).join('/'))} and ${JSON.stringify(comps.slice(0, i + 1).join('/'))}, entry ${JSON.stringify(name)}); refusing to strip`,
        );
      }
    }
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : `${this.root}/${rel}`;
  }

  /** Make sure the parent directory of `rel` exists, and that it is reached through no symlink. */
  private parentOf(rel: string, name: string): void {
    const slash = rel.lastIndexOf('/');
    const parent = slash < 0 ? '' : rel.slice(0, slash);
    if (this.dirs.has(parent)) return;
    const comps = parent.split('/');
    let p = '';
    for (const c of comps) {
      p = p ? `${p}/${c}` : c;
      if (this.symlinks.has(p)) throw this.refuse(name, `path passes through the symlink ${JSON.stringify(p)}`);
      if (this.nondirs.has(p)) throw this.refuse(name, `${JSON.stringify(p)} is not a directory`);
    }
    mkdirSync(this.abs(parent), { recursive: true, mode: 0o777 });
    p = '';
    for (const c of comps) {
      p = p ? `${p}/${c}` : c;
      if (!this.dirs.has(p)) this.dirs.set(p, undefined);
    }
  }

  /** An entry replaces whatever an earlier entry of the same name made (like tar). */
  private replace(rel: string, name: string): void {
    if (this.dirs.has(rel)) throw this.refuse(name, `conflicts with a directory of the same name`);
    this.symlinks.delete(rel);
    if (this.nondirs.has(rel)) {
      const late = this.lateLinks.findIndex((l) => l.path === rel);
      if (late >= 0) this.lateLinks.splice(late, 1); // not made yet
      else unlinkSync(this.abs(rel));
      this.nondirs.delete(rel);
    }
  }

  /** Handle one entry; `done` is called when its data is written (or throws / gets an error). */
  entry(header: Header, stream: EntryStream, done: (err?: unknown) => void): void {
    try {
      this.handle(header, stream, done);
    } catch (e) {
      if (e instanceof DomuError) throw e;
      throw new DomuError(`${this.label}: cannot extract ${JSON.stringify(header.name)}: ${errorMessage(e)}`, { cause: e });
    }
  }

  private handle(header: Header, stream: EntryStream, done: (err?: unknown) => void): void {
    const name = header.name;
    const mode = header.mode & 0o7777;
    const mtime = paxMtime(header) ?? header.mtime;
    switch (header.type) {
      case 'file':
      case 'contiguous-file': {
        const rel = this.relPath(name, false)!;
        this.parentOf(rel, name);
        this.replace(rel, name);
        this.file(rel, name, mode, mtime, stream, done);
        return;
      }
      case 'directory': {
        const rel = this.relPath(name, true);
        if (rel === '') {
          this.rootInfo = { mode, mtime };
        } else if (rel !== null) {
          if (this.symlinks.has(rel)) this.symlinks.delete(rel);
          if (this.nondirs.has(rel)) throw this.refuse(name, `conflicts with a file of the same name`);
          this.parentOf(rel, name);
          // Created writable for us; the archive's mode and time are applied at the end.
          if (!this.dirs.has(rel)) mkdirSync(this.abs(rel), { mode: (mode | 0o700) & 0o777 });
          this.dirs.set(rel, { mode, mtime });
          this.counts.dirs++;
        }
        return drainThen(header, stream, done);
      }
      case 'symlink': {
        const rel = this.relPath(name, false)!;
        const target = header.linkname ?? '';
        if (target === '') throw this.refuse(name, `symlink with an empty target`);
        if (target.includes('\0')) throw this.refuse(name, `NUL byte in symlink target`);
        if (target.startsWith('/')) throw this.refuse(name, `symlink target ${JSON.stringify(target)} is absolute (leaves the tree)`);
        if (lexicalResolve(dirOf(rel), target) === null) throw this.refuse(name, `symlink target ${JSON.stringify(target)} leaves the tree`);
        this.parentOf(rel, name);
        this.replace(rel, name);
        this.symlinks.set(rel, { target, mtime, name });
        return drainThen(header, stream, done);
      }
      case 'link': {
        const rel = this.relPath(name, false)!;
        const linkname = header.linkname ?? '';
        let target: string | null = null;
        try {
          target = this.relPath(linkname, false);
        } catch {
          /* absolute, "..", or outside the top directory */
        }
        if (!target) throw this.refuse(name, `hardlink target ${JSON.stringify(linkname)} leaves the tree`);
        const toSymlink = this.symlinks.has(target);
        if (!toSymlink && !this.nondirs.has(target)) {
          throw this.refuse(name, `hardlink target ${JSON.stringify(linkname)} is not an earlier file of the archive`);
        }
        if (target === rel) return drainThen(header, stream, done);
        this.parentOf(rel, name);
        this.replace(rel, name);
        if (toSymlink) this.lateLinks.push({ path: rel, target, name });
        else linkSync(this.abs(target), this.abs(rel));
        this.nondirs.add(rel);
        this.counts.hardlinks++;
        return drainThen(header, stream, done);
      }
      case 'character-device':
      case 'block-device':
        throw this.refuse(name, `${header.type} entries are not allowed`);
      case 'fifo':
        throw this.refuse(name, `FIFO entries are not allowed`);
      default:
        throw this.refuse(name, `unsupported entry type`);
    }
  }

  private file(rel: string, name: string, mode: number, mtime: Date, stream: EntryStream, done: (err?: unknown) => void): void {
    const path = this.abs(rel);
    const chunks: Buffer[] = [];
    let pending = 0;
    let fd = -1;
    let failed = false;
    const openIt = () => {
      fd = openSync(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
    };
    const flush = () => {
      if (fd < 0) openIt();
      writeAll(fd, chunks, pending);
      this.counts.bytes += pending;
      chunks.length = 0;
      pending = 0;
    };
    const fail = (e: unknown) => {
      if (failed) return;
      failed = true;
      if (fd >= 0) closeQuietly(fd);
      done(e instanceof DomuError ? e : new DomuError(`${this.label}: cannot write ${JSON.stringify(name)}: ${errorMessage(e)}`, { cause: e }));
    };
    stream.on('data', (c: Buffer) => {
      if (failed) return;
      chunks.push(c);
      pending += c.length;
      if (pending >= FLUSH_BYTES) {
        try {
          flush();
        } catch (e) {
          fail(e);
        }
      }
    });
    // An error of the entry's stream is the parser's own (e.g. the data ended): it is reported
    // from there; here only the file is closed.
    stream.on('error', () => {
      if (failed) return;
      failed = true;
      if (fd >= 0) closeQuietly(fd);
    });
    stream.on('end', () => {
      if (failed) return;
      try {
        flush();
        if (mode & ~0o777 || mode & this.umask) fchmodSync(fd, mode);
        futimesSync(fd, mtime, mtime);
        closeSync(fd);
        fd = -1;
      } catch (e) {
        fail(e);
        return;
      }
      this.nondirs.add(rel);
      this.counts.files++;
      done();
    });
  }

  /** After the last entry: check and create the symlinks, then set directory modes and times. */
  finish(): void {
    if (this.strip > 0 && !this.top && this.rootInfo === undefined && this.shallow.length === 0 && this.dirs.size === 1) {
      throw new DomuError(`${this.label}: the archive holds no entries`);
    }
    for (const [rel, l] of this.symlinks) {
      const r = resolveThroughLinks(this.symlinks, dirOf(rel), l.target, 0);
      if (r === 'loop') throw this.refuse(l.name, `symlink target ${JSON.stringify(l.target)}: too many levels of symbolic links`);
      if (r === null) throw this.refuse(l.name, `symlink target ${JSON.stringify(l.target)} leaves the tree (through other symlinks)`);
    }
    this.counts.symlinks = this.symlinks.size;
    for (const [rel, l] of this.symlinks) {
      const p = this.abs(rel);
      try {
        symlinkSync(l.target, p);
      } catch (e) {
        throw new DomuError(`${this.label}: cannot create symlink ${JSON.stringify(l.name)}: ${errorMessage(e)}`, { cause: e });
      }
      try {
        lutimesSync(p, l.mtime, l.mtime);
      } catch {
        /* not supported everywhere; the target is what matters */
      }
    }
    for (const l of this.lateLinks) {
      try {
        linkSync(this.abs(l.target), this.abs(l.path));
      } catch (e) {
        throw new DomuError(`${this.label}: cannot create hardlink ${JSON.stringify(l.name)}: ${errorMessage(e)}`, { cause: e });
      }
    }
    // Deepest first, so that no later step touches a directory whose time was already set.
    const dirs = [...this.dirs.entries()].filter(([rel]) => rel !== '').reverse();
    for (const [rel, info] of dirs) {
      if (!info) continue;
      const p = this.abs(rel);
      chmodSync(p, info.mode);
      utimesSync(p, info.mtime, info.mtime);
    }
    const rootMode = this.rootInfo?.mode ?? 0o777 & ~this.umask;
    chmodSync(this.root, rootMode);
    if (this.rootInfo) utimesSync(this.root, this.rootInfo.mtime, this.rootInfo.mtime);
  }
}

function drainThen(header: Header, stream: EntryStream, done: (err?: unknown) => void): void {
  // tar-stream gives directories and empty entries no body to wait for.
  if (header.size === 0 || header.type === 'directory') {
    done();
    return;
  }
  stream.on('end', () => done());
  stream.resume(); // an error of the stream is the parser's, reported from there

}

function writeAll(fd: number, chunks: Buffer[], total: number): void {
  if (total === 0) return;
  let written = chunks.length === 1 ? writeSync(fd, chunks[0]!) : writevSync(fd, chunks);
  if (written === total) return;
  // Short write: finish the rest piece by piece.
  const all = Buffer.concat(chunks, total);
  while (written < total) written += writeSync(fd, all, written, total - written);
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    /* already failing */
  }
}

function currentUmask(): number {
  // Reading the umask without changing it (a documentation-only deprecation, no warning).
  return process.umask();
}

function paxMtime(header: Header): Date | undefined {
  const pax = header.pax as Record<string, string> | null | undefined;
  const v = pax?.mtime;
  if (!v) return undefined;
  const s = Number(v);
  return Number.isFinite(s) ? new Date(s * 1000) : undefined;
}

function dirOf(rel: string): string[] {
  const comps = rel.split('/');
  comps.pop();
  return comps;
}

/** Resolve `target` against `dir` by name only; null when it climbs above the root. */
function lexicalResolve(dir: string[], target: string): string[] | null {
  const cur = [...dir];
  for (const c of target.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (cur.length === 0) return null;
      cur.pop();
    } else cur.push(c);
  }
  return cur;
}

/** Resolve `target` against `dir` the way the kernel will, following the archive's own symlinks. */
function resolveThroughLinks(links: Map<string, { target: string }>, dir: string[], target: string, depth: number): string[] | null | 'loop' {
  if (target.startsWith('/')) return null;
  let cur = [...dir];
  for (const c of target.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') {
      if (cur.length === 0) return null;
      cur.pop();
      continue;
    }
    cur.push(c);
    const link = links.get(cur.join('/'));
    if (link !== undefined) {
      if (depth >= MAX_LINK_DEPTH) return 'loop';
      const r = resolveThroughLinks(links, cur.slice(0, -1), link.target, depth + 1);
      if (r === null || r === 'loop') return r;
      cur = r;
    }
  }
  return cur;
}
