// Cache entry manifests: what an entry held when it was stored, so that a lookup can prove the
// entry is still exactly that (src/core/cache.ts decides when each proof is used).
//
// `.domu-manifest.json` lists every directory, file and symlink under the entry (relative path,
// type, permission bits, mtime; size and sha256 of files; targets of symlinks). It is written in
// the temporary directory, after the producer finished and before the rename, so an entry that
// has a name has a manifest.
//
// `.domu-fingerprint.json` is a sha256 over every path's lstat (inode, size, mode, mtime, ctime)
// and the manifest's own: any write, truncation, chmod, touch, replacement, addition or removal
// changes it (ctime cannot be set back from user space). It lets big entries be proved unchanged
// by a stat walk instead of reading every byte; when it differs the entry is hashed in full and,
// if that passes (a copied cache: new inodes), the fingerprint is recorded again.
//
// Top-level names that begin with a dot are never entry content: they are the manifest, the
// fingerprint, temporaries of atomic writes, or sidecars that a user of the entry adds later
// (e.g. a test helper's `.xl-offline/`). Producers must not put content there.
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync, type BigIntStats } from 'node:fs';
import { join } from 'node:path';
import { writeFileAtomic } from './atomic.js';
import { errorMessage } from './errors.js';
import { sha256FileSync } from './hash.js';

export const MANIFEST_FILE = '.domu-manifest.json';
export const FINGERPRINT_FILE = '.domu-fingerprint.json';
const FORMAT = 'domu-cache-manifest';
const MANIFEST_VERSION = 1;
const FINGERPRINT_VERSION = 1;

export type EntryType = 'file' | 'dir' | 'symlink';

export interface ManifestEntry {
  /** Relative to the entry, `/`-separated. */
  path: string;
  type: EntryType;
  /** Permission bits (mode & 0o7777). */
  mode: number;
  /** mtime in nanoseconds since the epoch, as a decimal string. */
  mtime: string;
  size?: number;
  sha256?: string;
  target?: string;
}

export interface Manifest {
  format: typeof FORMAT;
  version: number;
  entries: ManifestEntry[];
}

interface Walked {
  rel: string;
  abs: string;
  st: BigIntStats;
}

const isOurs = (name: string) => name.startsWith('.');

/** Every path under `root` (not `root` itself), parents before children, names sorted; top-level dot names left out. */
function walk(root: string): Walked[] {
  const out: Walked[] = [];
  const visit = (abs: string, rel: string) => {
    const names = readdirSync(abs).sort();
    for (const name of names) {
      if (!rel && isOurs(name)) continue;
      const r = rel ? `${rel}/${name}` : name;
      const a = join(abs, name);
      const st = lstatSync(a, { bigint: true });
      out.push({ rel: r, abs: a, st });
      if (st.isDirectory()) visit(a, r);
    }
  };
  visit(root, '');
  return out;
}

function typeOf(st: BigIntStats): EntryType | undefined {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  return undefined;
}

/** Let timers, signals and progress through between chunks of synchronous work. */
const breathe = () => new Promise<void>((res) => setImmediate(res));
/** Bytes hashed between two breaths. */
const BREATH_BYTES = 64 << 20;

/**
 * The stat fingerprint of `root`: every path (sorted, top-level dot names left out except the
 * manifest) with its inode, mode, size, mtime and ctime, hashed. Plain number stats (ms with a
 * sub-µs fraction) and one hash update per array: this walk is what a lookup of a big entry
 * costs, in a fresh process each build, so it avoids BigInt and per-path strings.
 */
function fingerprint(root: string): string {
  const names: string[] = [];
  const nums: number[] = [];
  const visit = (abs: string, rel: string) => {
    for (const name of readdirSync(abs).sort()) {
      if (!rel && isOurs(name) && name !== MANIFEST_FILE) continue;
      const a = `${abs}/${name}`;
      const st = lstatSync(a);
      names.push(rel ? `${rel}/${name}` : name);
      nums.push(st.ino, st.mode, st.size, st.mtimeMs, st.ctimeMs);
      if (st.isDirectory()) visit(a, names[names.length - 1]!);
    }
  };
  visit(root, '');
  const h = createHash('sha256');
  h.update(`domu fingerprint v${FINGERPRINT_VERSION}\0${lstatSync(root).dev}\0`);
  h.update(names.join('\0'));
  h.update(new Float64Array(nums));
  return h.digest('hex');
}

async function recordFingerprint(root: string, fp: string): Promise<void> {
  await writeFileAtomic(join(root, FINGERPRINT_FILE), `${JSON.stringify({ version: FINGERPRINT_VERSION, stat: fp })}\n`, 0o644, { flush: false });
}

export interface ManifestSummary {
  files: number;
  bytes: number;
  entries: number;
}

/**
 * Write the manifest (and the stat fingerprint) of the finished directory `root`. Hashes every
 * file. Throws when the producer left something a manifest cannot describe (a device node, a
 * socket) or content under a top-level dot name.
 */
export async function writeManifest(root: string): Promise<ManifestSummary> {
  for (const name of readdirSync(root)) {
    if (isOurs(name)) throw new Error(`cache producer left ${join(root, name)}: top-level names beginning with a dot are reserved for the cache`);
  }
  const walked = walk(root);
  const entries: ManifestEntry[] = [];
  let bytes = 0;
  let sinceBreath = 0;
  for (const w of walked) {
    const type = typeOf(w.st);
    if (!type) throw new Error(`cache producer left ${w.abs}, which is neither a file, a directory nor a symlink`);
    const e: ManifestEntry = { path: w.rel, type, mode: Number(w.st.mode & 0o7777n), mtime: String(w.st.mtimeNs) };
    if (type === 'file') {
      e.size = Number(w.st.size);
      e.sha256 = sha256FileSync(w.abs);
      bytes += e.size;
      sinceBreath += e.size;
      if (sinceBreath > BREATH_BYTES) {
        sinceBreath = 0;
        await breathe();
      }
    } else if (type === 'symlink') e.target = readlinkSync(w.abs);
    entries.push(e);
  }
  const manifest: Manifest = { format: FORMAT, version: MANIFEST_VERSION, entries };
  // flush: the manifest is the entry's proof; a crash must not leave an empty one behind the rename.
  await writeFileAtomic(join(root, MANIFEST_FILE), `${JSON.stringify(manifest)}\n`);
  // Before the rename, which changes only the entry directory's own times (not part of it).
  await recordFingerprint(root, fingerprint(root));
  return { files: entries.filter((e) => e.type === 'file').length, bytes, entries: entries.length };
}

/** Why an entry cannot be trusted; `legacy` when it has no manifest at all. */
export interface Problem {
  reason: string;
  legacy?: boolean;
}

/** The manifest of `root`, or the problem with it. */
export function readManifest(root: string): Manifest | Problem {
  let text: string;
  try {
    text = readFileSync(join(root, MANIFEST_FILE), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { reason: 'no manifest: written by an older version of domu', legacy: true };
    return { reason: `manifest unreadable: ${errorMessage(e)}` };
  }
  let m: unknown;
  try {
    m = JSON.parse(text);
  } catch {
    return { reason: 'manifest garbled (not JSON)' };
  }
  const bad = manifestShapeProblem(m);
  return bad ? { reason: `manifest garbled (${bad})` } : (m as Manifest);
}

function manifestShapeProblem(m: unknown): string | undefined {
  if (!m || typeof m !== 'object') return 'not an object';
  const o = m as Partial<Manifest>;
  if (o.format !== FORMAT) return 'wrong format';
  if (o.version !== MANIFEST_VERSION) return `version ${String(o.version)}`;
  if (!Array.isArray(o.entries)) return 'no entries';
  for (const e of o.entries as unknown[]) {
    const x = e as Partial<ManifestEntry>;
    if (!x || typeof x !== 'object' || typeof x.path !== 'string' || !x.path || typeof x.mode !== 'number' || typeof x.mtime !== 'string') return 'bad entry';
    if (x.path.split('/').some((p) => p === '' || p === '.' || p === '..')) return `bad path ${JSON.stringify(x.path)}`;
    if (x.type === 'file') {
      if (typeof x.size !== 'number' || typeof x.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(x.sha256)) return `bad file entry ${x.path}`;
    } else if (x.type === 'symlink') {
      if (typeof x.target !== 'string') return `bad symlink entry ${x.path}`;
    } else if (x.type !== 'dir') return `bad type of ${x.path}`;
  }
  return undefined;
}

const isManifest = (m: Manifest | Problem): m is Manifest => (m as Manifest).format === FORMAT;

function sizeText(n: number | bigint): string {
  return `${n} byte${Number(n) === 1 ? '' : 's'}`;
}

export interface VerifyResult {
  ok: boolean;
  /** When not ok: what is wrong, e.g. `bin/busybox: sha256 differs`. */
  reason?: string;
  legacy?: boolean;
  /** How the entry was proved: by its stat fingerprint, by hashing every file, or not yet (`deferred`). */
  by?: 'fingerprint' | 'hash' | 'deferred';
  /** Bytes hashed (0 for a fingerprint proof). */
  hashedBytes?: number;
}

/**
 * Prove `root` is what its manifest says, hashing every file. With `recordFingerprint`, on
 * success the stat fingerprint is recorded again (best effort) when it no longer matches, so
 * that `verifyByStat` can prove the entry cheaply next time.
 */
export async function verifyByHash(root: string, opts: { recordFingerprint?: boolean } = {}): Promise<VerifyResult> {
  // The stats before anything is read: recorded at the end only if they still hold then.
  let before: string | undefined;
  try {
    if (opts.recordFingerprint) before = fingerprint(root);
  } catch {
    // reported below
  }
  const m = readManifest(root);
  if (!isManifest(m)) return { ok: false, ...m };
  let walked: Walked[];
  try {
    walked = walk(root);
  } catch (e) {
    return { ok: false, reason: `cannot read the entry: ${errorMessage(e)}` };
  }
  // What is wrong, most telling first: a directory's mtime or a mode is often only the trace of
  // a file added or removed, and a sha256 is worth computing only when the structure holds.
  const structural: string[] = [];
  const metadata: string[] = [];
  const expected = new Map(m.entries.map((e) => [e.path, e]));
  const toHash: [Walked, ManifestEntry][] = [];
  for (const w of walked) {
    const e = expected.get(w.rel);
    if (!e) {
      structural.push(`${w.rel}: not in the manifest (added)`);
      continue;
    }
    expected.delete(w.rel);
    const type = typeOf(w.st);
    if (type !== e.type) {
      structural.push(`${w.rel}: is ${type ? `a ${type}` : 'a special file'}, was a ${e.type}`);
      continue;
    }
    if (type === 'file' && Number(w.st.size) !== e.size) structural.push(`${w.rel}: ${sizeText(w.st.size)}, was ${sizeText(e.size!)}`);
    else if (type === 'symlink') {
      const target = readlinkSync(w.abs);
      if (target !== e.target) structural.push(`${w.rel}: symlink changed (to ${target}, was to ${e.target})`);
    }
    if (type !== 'symlink' && Number(w.st.mode & 0o7777n) !== e.mode) metadata.push(`${w.rel}: mode ${(w.st.mode & 0o7777n).toString(8)}, was ${e.mode.toString(8)}`);
    else if (String(w.st.mtimeNs) !== e.mtime) metadata.push(`${w.rel}: mtime changed`);
    if (type === 'file') toHash.push([w, e]);
  }
  for (const e of expected.values()) structural.push(`${e.path}: missing`);
  // A mode or mtime is reported only when nothing else is wrong: the truncated file's mtime and
  // the directory that lost a file are traces of the problem already named.
  if (structural.length) return { ok: false, reason: summarize(structural) };

  const content: string[] = [];
  let hashed = 0;
  let sinceBreath = 0;
  for (const [w, e] of toHash) {
    let actual: string;
    try {
      actual = sha256FileSync(w.abs);
    } catch (err) {
      content.push(`${w.rel}: unreadable (${errorMessage(err)})`);
      continue;
    }
    if (actual !== e.sha256) content.push(`${w.rel}: sha256 differs`);
    hashed += e.size!;
    sinceBreath += e.size!;
    if (sinceBreath > BREATH_BYTES) {
      sinceBreath = 0;
      await breathe();
    }
  }
  if (content.length || metadata.length) return { ok: false, reason: summarize(content.length ? content : metadata) };

  // Record the fingerprint of what was just proved, unless something changed meanwhile.
  try {
    if (before && readFingerprint(root) !== before && fingerprint(root) === before) await recordFingerprint(root, before);
  } catch {
    // A read-only cache: the next lookup hashes again.
  }
  return { ok: true, by: 'hash', hashedBytes: hashed };
}

function readFingerprint(root: string): string | undefined {
  try {
    const f = JSON.parse(readFileSync(join(root, FINGERPRINT_FILE), 'utf8')) as { version?: unknown; stat?: unknown };
    return f.version === FINGERPRINT_VERSION && typeof f.stat === 'string' ? f.stat : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Prove `root` unchanged since its manifest was proved, by a stat walk against the recorded
 * fingerprint; when that differs (or there is none), fall back to `verifyByHash`.
 */
export async function verifyByStat(root: string): Promise<VerifyResult> {
  const recorded = readFingerprint(root);
  if (recorded) {
    try {
      if (fingerprint(root) === recorded) return { ok: true, by: 'fingerprint', hashedBytes: 0 };
    } catch {
      // e.g. no manifest: verifyByHash says what is wrong
    }
  }
  return verifyByHash(root, { recordFingerprint: true });
}

/** Only that `root` has a manifest (for entries proved in full later, when they are used). */
export function hasManifest(root: string): VerifyResult {
  try {
    if (lstatSync(join(root, MANIFEST_FILE)).isFile()) return { ok: true, by: 'deferred', hashedBytes: 0 };
  } catch {
    // below
  }
  return { ok: false, reason: 'no manifest: written by an older version of domu', legacy: true };
}

/**
 * The sha256 the manifest records for the file `rel`. Finds that one entry in the manifest's text
 * (as writeManifest wrote it) instead of parsing a kernel's 1 MB manifest; any other shape gives
 * undefined, which callers treat as a mismatch.
 */
export function manifestFileSha256(root: string, rel: string): string | undefined {
  let text: string;
  try {
    text = readFileSync(join(root, MANIFEST_FILE), 'utf8');
  } catch {
    return undefined;
  }
  const at = text.indexOf(`{"path":${JSON.stringify(rel)},"type":"file",`);
  if (at < 0) return undefined;
  const re = /\{"path":"(?:[^"\\]|\\.)*","type":"file","mode":\d+,"mtime":"\d+","size":\d+,"sha256":"([0-9a-f]{64})"\}/y;
  re.lastIndex = at;
  return re.exec(text)?.[1];
}

/** The newest mtime (whole seconds) of anything the manifest lists under `prefix/`. */
export function manifestNewestMtime(root: string, prefix: string): number | undefined {
  const m = readManifest(root);
  if (!isManifest(m)) return undefined;
  let newest = 0n;
  for (const e of m.entries) if (e.path.startsWith(`${prefix}/`) && BigInt(e.mtime) > newest) newest = BigInt(e.mtime);
  return newest > 0n ? Number(newest / 1_000_000_000n) : undefined;
}

function summarize(problems: string[]): string {
  return problems.length === 1 ? problems[0]! : `${problems[0]}; and ${problems.length - 1} more`;
}
