// The output side of safe tar extraction (tar.ts): the tree an archive's entries are written into,
// each checked before it touches the disk (no absolute paths, no `..`, no path through an extracted
// symlink, links only within the tree, one top directory when stripping), with synchronous file
// system calls (small files dominate; one call per step is fastest).
import {
  closeSync,
  constants as fsc,
  fchmodSync,
  futimesSync,
  linkSync,
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
import type { Header } from 'tar-stream';
import { DomuError, errorMessage } from '../core/errors.js';
import { dirOf, lexicalResolve, resolveThroughLinks } from './tar-paths.js';

/** What we use of tar-stream's entry stream (a streamx Readable). */
export interface EntryStream {
  on(event: 'data', listener: (chunk: Buffer) => void): unknown;
  on(event: 'end', listener: () => void): unknown;
  on(event: 'error', listener: (err: unknown) => void): unknown;
  resume(): unknown;
}

/** Files are buffered up to this size and written with one call; larger ones are written as they come. */
const FLUSH_BYTES = 1 << 20;

interface DirInfo {
  mode: number;
  mtime: Date;
}

export class TreeWriter {
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
