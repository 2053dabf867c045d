// Safe, streaming tar extraction (design.md, "extract").
// tar-stream parses; bzip2 goes through a native `bzip2 -dc` child when there is one (fast),
// unbzip2-stream otherwise; gzip through node:zlib; plain tar is read as is.
// Refused, with an error naming the archive and the entry: absolute paths, `..` components,
// symlinks whose target leaves the tree (checked again at the end, through the final set of
// links), hardlinks to anything but an earlier entry, device/FIFO/unknown entries, paths that
// pass through an extracted symlink, and (when stripping) more than one top directory.
// Everything is written into a temporary directory beside `dest`, renamed into place at the end;
// on any failure the temporary directory is removed and the decompressor child killed.
// This file is the input side (sniffing, decompression, parsing, back-pressure); the tree is
// written, and every entry checked, by tar-tree.ts.
import { createReadStream } from 'node:fs';
import { lstat, mkdir, open, rename, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { setImmediate as yieldToIo } from 'node:timers/promises';
import { createGunzip } from 'node:zlib';
import { tempPathFor } from '../core/atomic.js';
import { abortError, AbortedError, DomuError, errorMessage } from '../core/errors.js';
import { ExecError, spawnStream, which, type ExecEnv, type StreamChild } from '../core/exec.js';
import { TreeWriter, type EntryStream } from './tar-tree.js';

// tar-stream and unbzip2-stream are loaded when an archive is extracted, not when the CLI starts
// (a no-op build extracts nothing), and before any decompressor child is started.
interface TarLibs {
  tarExtract: typeof import('tar-stream').extract;
  unbzip2: typeof import('unbzip2-stream');
}
let tarLibs: Promise<TarLibs> | undefined;
const loadTarLibs = () => (tarLibs ??= Promise.all([import('tar-stream'), import('unbzip2-stream')]).then(([t, u]) => ({ tarExtract: t.extract, unbzip2: u.default })));

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

  const libs = await loadTarLibs();
  const tmp = tempPathFor(dest);
  await mkdir(tmp, { mode: 0o700 });
  let child: StreamChild | undefined;
  try {
    let source: Readable;
    if (compression === 'bzip2' && decompressor === 'native') {
      // Nothing is awaited between starting the child and parse() attaching the reader.
      child = await spawnStream(env, 'bzip2', ['-dc', '--', archive]);
      source = child.stdout;
    } else {
      source = jsSource(archive, compression, libs);
    }
    const writer = new TreeWriter(tmp, label, strip);
    await parse(source, writer, env, opts.onProgress, child, libs);
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

function jsSource(archive: string, compression: Compression, { unbzip2 }: TarLibs): Readable {
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
async function parse(source: Readable, writer: TreeWriter, env: ExecEnv, onProgress: ((n: number) => void) | undefined, child: StreamChild | undefined, { tarExtract }: TarLibs): Promise<void> {
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
