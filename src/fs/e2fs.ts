// e2fsprogs helpers for the image stage: what mke2fs can do, debugfs scripts (and their quoting),
// `e2fsck -fn`, `dumpe2fs -h`, the layout mke2fs would choose (`mke2fs -n`), deterministic UUIDs
// and debugfs listings. Every program runs through exec.run (argument arrays, no shell).
import type { DeviceSpec } from './devtable.js';
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import { DomuError, errorMessage } from '../core/errors.js';
import { ExecError, run, type ExecEnv } from '../core/exec.js';

const E2FS_HINT = 'install e2fsprogs (apt-get install e2fsprogs)';

// ---------------------------------------------------------------------------------------------
// Capabilities

export interface Mke2fsInfo {
  /** e.g. "1.47.0"; undefined when the version line could not be read. */
  version: string | undefined;
  /** `mke2fs -d <dir>` (populate from a directory, e2fsprogs ≥ 1.43). */
  populateFromDir: boolean;
}

/** [major, minor, patch] from text such as `mke2fs 1.47.0 (5-Feb-2023)`. */
export function parseE2fsVersion(text: string): [number, number, number] | undefined {
  const m = /\b(?:mke2fs|debugfs|e2fsck)\s+(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return m ? [Number(m[1]), Number(m[2]), Number(m[3] ?? 0)] : undefined;
}

export function versionAtLeast(v: readonly number[], want: readonly number[]): boolean {
  for (let i = 0; i < want.length; i++) {
    const a = v[i] ?? 0;
    const b = want[i] ?? 0;
    if (a !== b) return a > b;
  }
  return true;
}

let detected: Promise<Mke2fsInfo> | undefined;

/**
 * What the installed mke2fs can do; asked once per process. From the version (`-d` came with
 * 1.43), or from the usage text when the version line is unreadable.
 */
export function detectMke2fs(env: ExecEnv): Promise<Mke2fsInfo> {
  detected ??= (async (): Promise<Mke2fsInfo> => {
    const r = await run(env, 'mke2fs', ['-V'], { okExitCodes: [0, 1], missingHint: E2FS_HINT });
    const text = `${r.stdout}\n${r.stderr}`;
    const v = parseE2fsVersion(text);
    if (v) return { version: v.join('.'), populateFromDir: versionAtLeast(v, [1, 43]) };
    // No version line: `mke2fs` without arguments prints its usage, which names `-d` when supported.
    const u = await run(env, 'mke2fs', [], { okExitCodes: [0, 1] });
    return { version: undefined, populateFromDir: /\[-d root-directory\]/.test(`${u.stdout}\n${u.stderr}`) };
  })();
  detected.catch(() => {
    detected = undefined; // e.g. aborted: ask again next time
  });
  return detected;
}

// ---------------------------------------------------------------------------------------------
// Deterministic UUIDs

/**
 * A UUID derived from a hex hash (and optional extra parts, e.g. size and label): the first 16
 * bytes of sha256(hash NUL part NUL …), formatted 8-4-4-4-12 with the RFC 4122/9562 variant bits
 * and version 8 ("custom", the RFC 9562 form for hash-derived UUIDs).
 */
export function deterministicUuid(hexHash: string, ...parts: (string | number)[]): string {
  if (!/^[0-9a-f]+$/i.test(hexHash)) throw new DomuError(`not a hex hash: ${JSON.stringify(hexHash)}`);
  const b = createHash('sha256')
    .update([hexHash.toLowerCase(), ...parts.map(String)].join('\0'))
    .digest()
    .subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x80;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

// ---------------------------------------------------------------------------------------------
// debugfs scripts

/** Whether debugfs can be given this name or path (quoted); names with newlines or `"` cannot. */
export function debugfsSafe(path: string): boolean {
  return !/["\n\r\0]/.test(path);
}

/**
 * A path (or name) as one debugfs argument: always double-quoted, so that spaces, quotes `'`,
 * `#` and the like are literal. debugfs (libss) has no escape for `"` and a script is line based,
 * so names with `"` or newlines are refused rather than mis-quoted.
 */
export function debugfsQuote(path: string): string {
  if (!debugfsSafe(path)) {
    throw new DomuError(`cannot name ${JSON.stringify(path)} in a debugfs script (it contains a newline or a double quote); rename it or use populate: mount`);
  }
  return `"${path}"`;
}

/** A device node for the debugfs script; the type bits are added to `mode` here. */
export type DebugfsDevice = DeviceSpec;

export interface FixupScriptInput {
  /** Directories to create first (absolute, parents before children), e.g. /dev when the tree has none. */
  mkdirs?: readonly string[];
  devices?: readonly DebugfsDevice[];
  /** Every other inode's path (absolute; `/` included): set to uid/gid 0 and the epoch. */
  paths: readonly string[];
  /** Seconds since 1970 for atime, mtime, ctime and crtime of every inode. */
  epoch: number;
}

const TYPE_BITS = { c: 0o020000, b: 0o060000 } as const;

/** Canonical absolute path in the image: `/`-separated, no `.`/`..`/empty components. */
export function imagePath(path: string): string {
  const n = posix.normalize(`/${path}`);
  return n.length > 1 && n.endsWith('/') ? n.slice(0, -1) : n;
}

/**
 * The one `debugfs -w -f` script of the rootless population: create the directories and device
 * nodes (`cd` into the parent, `mknod name c MAJ MIN` — a `/` in the name would make one bogus
 * entry — then `sif name mode 0<type|perm>`, since mknod creates mode 0000), then give every inode
 * root ownership and the epoch as atime/mtime/ctime/crtime (mke2fs -d copies the builder's
 * ownership and the source tree's times; `touch` cannot set ctime).
 */
export function fixupScript(input: FixupScriptInput): string {
  const lines: string[] = [];
  const t = `@${input.epoch}`;
  const own = (p: string, uid: number, gid: number) => {
    const q = debugfsQuote(p);
    lines.push(`sif ${q} uid ${uid}`, `sif ${q} gid ${gid}`);
    for (const f of ['atime', 'mtime', 'ctime', 'crtime']) lines.push(`sif ${q} ${f} ${t}`);
  };
  for (const d of input.mkdirs ?? []) {
    lines.push(`mkdir ${debugfsQuote(imagePath(d))}`);
  }
  for (const d of input.devices ?? []) {
    const p = imagePath(d.path);
    const dir = posix.dirname(p);
    const name = posix.basename(p);
    if (p === '/' || !name) throw new DomuError(`device node path ${JSON.stringify(d.path)} names no file`);
    lines.push(`cd ${debugfsQuote(dir)}`);
    lines.push(`mknod ${debugfsQuote(name)} ${d.type} ${d.major} ${d.minor}`);
    lines.push(`sif ${debugfsQuote(name)} mode 0${(TYPE_BITS[d.type] | (d.mode & 0o7777)).toString(8)}`);
  }
  if (input.devices?.length) lines.push('cd /');
  for (const d of input.mkdirs ?? []) own(imagePath(d), 0, 0);
  for (const p of input.paths) own(imagePath(p), 0, 0);
  for (const d of input.devices ?? []) own(imagePath(d.path), d.uid, d.gid);
  return `${lines.join('\n')}\n`;
}

/**
 * Run a debugfs script (`debugfs [-w] -f - <image>`, the script on stdin). debugfs exits 0 even
 * when commands fail, so any stderr line other than its version banner is a failure.
 * Returns stdout (each command echoed as `debugfs: <command>`, followed by its output).
 */
export async function runDebugfs(env: ExecEnv, image: string, script: string, opts: { write?: boolean; env?: Record<string, string> } = {}): Promise<string> {
  const args = [...(opts.write ? ['-w'] : []), '-f', '-', image];
  const r = await run(env, 'debugfs', args, { input: script, quiet: true, missingHint: E2FS_HINT, ...(opts.env ? { env: opts.env } : {}) });
  const problems = r.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !/^debugfs \d+\.\d+/.test(l));
  if (problems.length) {
    const shown = problems.slice(0, 5).join('; ');
    throw new DomuError(`debugfs on ${image} failed: ${shown}${problems.length > 5 ? ` (and ${problems.length - 5} more)` : ''}`);
  }
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// Checks and reports

/** `e2fsck -fn <image>`: anything but a clean result is a DomuError with its first lines. */
export async function e2fsckCheck(env: ExecEnv, image: string): Promise<void> {
  try {
    await run(env, 'e2fsck', ['-fn', image], { missingHint: E2FS_HINT });
  } catch (e) {
    if (!(e instanceof ExecError)) throw e;
    const lines = `${e.stdout}\n${e.stderr}`
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l && !/^e2fsck \d/.test(l));
    throw new DomuError(`e2fsck -fn ${image} found problems (exit ${e.status}):\n  ${lines.slice(0, 8).join('\n  ')}`);
  }
}

/** `dumpe2fs -h <image>` as a map of header fields ("Inode count" → "65536"). */
export async function dumpe2fsHeader(env: ExecEnv, image: string): Promise<Map<string, string>> {
  const r = await run(env, 'dumpe2fs', ['-h', image], { quiet: true, missingHint: E2FS_HINT });
  return parseDumpe2fsHeader(r.stdout);
}

export function parseDumpe2fsHeader(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i <= 0) continue;
    const key = line.slice(0, i).trim();
    if (!m.has(key)) m.set(key, line.slice(i + 1).trim());
  }
  return m;
}

/** Inode count − Free inodes, from a dumpe2fs header. */
export function inodesUsed(header: Map<string, string>): number {
  const total = Number(header.get('Inode count'));
  const free = Number(header.get('Free inodes'));
  if (!Number.isFinite(total) || !Number.isFinite(free)) throw new DomuError('dumpe2fs -h: no "Inode count"/"Free inodes" lines');
  return total - free;
}

// ---------------------------------------------------------------------------------------------
// Layout: what mke2fs would make of a given size (dry run, nothing written)

export interface FsLayout {
  blockSize: number;
  blocks: number;
  inodes: number;
  groups: number;
  blocksPerGroup: number;
  inodesPerGroup: number;
}

/** Parse `mke2fs -n -v` output. */
export function parseLayout(text: string): FsLayout | undefined {
  const num = (re: RegExp) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : undefined;
  };
  const blockSize = num(/Block size=(\d+)/);
  const ib = /(\d+) inodes, (\d+) blocks/.exec(text);
  const groups = num(/(\d+) block groups?/);
  const bpg = num(/(\d+) blocks per group/);
  const ipg = num(/(\d+) inodes per group/);
  if (!blockSize || !ib || !groups || !bpg || !ipg) return undefined;
  return { blockSize, inodes: Number(ib[1]), blocks: Number(ib[2]), groups, blocksPerGroup: bpg, inodesPerGroup: ipg };
}

/**
 * The layout mke2fs would choose for a file system of `size` bytes with these options
 * (`mke2fs -n -v … /dev/null <KiB>k`: a dry run that writes nothing). Undefined when mke2fs
 * refuses the size (too small for ext4 with a journal).
 */
export async function dryRunLayout(env: ExecEnv, size: number, mkfsArgs: readonly string[]): Promise<FsLayout | undefined> {
  const kib = Math.floor(size / 1024);
  if (kib < 1) return undefined;
  const r = await run(env, 'mke2fs', ['-n', '-v', ...mkfsArgs, '-F', '/dev/null', `${kib}k`], { okExitCodes: [0, 1], quiet: true, missingHint: E2FS_HINT });
  if (r.exitCode !== 0) return undefined;
  return parseLayout(`${r.stdout}\n${r.stderr}`);
}

/** mke2fs's default journal size in blocks for a file system of `blocks` blocks (e2fsprogs 1.47). */
export function defaultJournalBlocks(blocks: number): number {
  if (blocks < 2048) return 0;
  if (blocks < 32768) return 1024;
  if (blocks < 256 * 1024) return 4096;
  if (blocks < 512 * 1024) return 8192;
  if (blocks < 4096 * 1024) return 16384;
  if (blocks < 8192 * 1024) return 32768;
  if (blocks < 16384 * 1024) return 65536;
  if (blocks < 32768 * 1024) return 131072;
  return 262144;
}

function isPowerOf(n: number, base: number): boolean {
  let x = base;
  while (x < n) x *= base;
  return x === n;
}

/**
 * Blocks an empty ext4 file system of this layout uses before any file is added: superblock and
 * group-descriptor copies (sparse_super, 64-bit descriptors), reserved GDT blocks (resize_inode),
 * bitmaps, inode tables, the journal, the root directory and lost+found. A little generous.
 */
export function metadataBlocks(l: FsLayout, inodeSize = 256): number {
  const bs = l.blockSize;
  const descPerBlock = bs / 64;
  const gdt = Math.ceil(l.groups / descPerBlock);
  const maxBlocks = Math.min(2 ** 32 - 1, l.blocks * 1024);
  const rsvGdt = Math.max(0, Math.min(bs / 4, Math.ceil(Math.ceil(maxBlocks / l.blocksPerGroup) / descPerBlock) - gdt));
  let backups = 0;
  for (let g = 0; g < l.groups; g++) if (g <= 1 || isPowerOf(g, 3) || isPowerOf(g, 5) || isPowerOf(g, 7)) backups++;
  const superAndGdt = backups * (1 + gdt + rsvGdt) + (bs === 1024 ? 1 : 0);
  const itable = l.groups * Math.ceil((l.inodesPerGroup * inodeSize) / bs);
  const bitmaps = 2 * l.groups;
  const journal = defaultJournalBlocks(l.blocks);
  const rootAndLpf = 1 + Math.ceil(16384 / bs);
  const resizeInode = rsvGdt > 0 ? 2 : 0;
  return superAndGdt + itable + bitmaps + journal + rootAndLpf + resizeInode;
}

// ---------------------------------------------------------------------------------------------
// Listings (debugfs `ls -p`), e.g. to compare two images in tests

export interface ImageEntry {
  /** Absolute path in the image. */
  path: string;
  inode: number;
  /** Full mode, type bits included (e.g. 0o100644, 0o020600). */
  mode: number;
  uid: number;
  gid: number;
  /** Bytes; undefined for directories. */
  size: number | undefined;
}

/** Parse `ls -p` lines: `/<ino>/<mode octal>/<uid>/<gid>/<name>/<size>/`. */
export function parseLsP(text: string, dir: string): ImageEntry[] {
  const out: ImageEntry[] = [];
  for (const line of text.split('\n')) {
    const m = /^\/(\d+)\/([0-7]+)\/(\d+)\/(\d+)\/(.*)\/(\d*)\/$/.exec(line);
    if (!m) continue;
    const name = m[5]!;
    if (name === '.' || name === '..') continue;
    out.push({
      path: dir === '/' ? `/${name}` : `${dir}/${name}`,
      inode: Number(m[1]),
      mode: parseInt(m[2]!, 8),
      uid: Number(m[3]),
      gid: Number(m[4]),
      size: m[6] === '' ? undefined : Number(m[6]),
    });
  }
  return out;
}

/** Every entry of an image below `/` (not `/` itself), sorted by path; one debugfs call per tree level. */
export async function listImage(env: ExecEnv, image: string): Promise<ImageEntry[]> {
  const all: ImageEntry[] = [];
  let level = ['/'];
  while (level.length) {
    const script = level.map((d) => `ls -p ${debugfsQuote(d)}`).join('\n');
    const out = await runDebugfs(env, image, `${script}\n`);
    const next: string[] = [];
    // Output: `debugfs: ls -p "<dir>"` then that directory's lines.
    const chunks = out.split(/^debugfs: /m).slice(1);
    if (chunks.length !== level.length) throw new DomuError(`debugfs ls of ${image}: expected ${level.length} listings, got ${chunks.length}`);
    chunks.forEach((chunk, i) => {
      const dir = level[i]!;
      for (const e of parseLsP(chunk, dir)) {
        all.push(e);
        if ((e.mode & 0o170000) === 0o040000) next.push(e.path);
      }
    });
    level = next;
  }
  return all.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** `debugfs -R 'stat <path>'` text (for tests and diagnostics). */
export async function statInImage(env: ExecEnv, image: string, path: string): Promise<string> {
  try {
    return await runDebugfs(env, image, `stat ${debugfsQuote(path)}\n`);
  } catch (e) {
    throw new DomuError(`stat ${path} in ${image}: ${errorMessage(e)}`);
  }
}
