// An index of a kernel's modules directory (`/lib/modules/<release>`): which file holds which
// module name, which aliases name which modules, and which modules are built into the kernel.
//
// Two ways to build it, as kmod does:
//  - from depmod's text files when `modules.dep` is there (names and paths from modules.dep,
//    aliases from modules.alias): no module file is opened;
//  - otherwise (a Debian kernel package ships no modules.dep) by reading every module's .modinfo
//    — about 4000 files for a distribution kernel, so the result is cached under a fingerprint of
//    the tree (every module file's path, size and mtime, and modules.builtin), and a second run
//    only has to stat the files.
// The index does not hold dependencies: the closure reads the .modinfo of the modules it visits
// (it needs their vermagic anyway), which is the authoritative source and costs a few files.
import { readdirSync, statSync } from 'node:fs';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join, posix } from 'node:path';
import { DomuError, errorMessage } from '../core/errors.js';
import type { ExecEnv } from '../core/exec.js';
import { sha256 } from '../core/hash.js';
import { moduleNameOf, readModinfo } from './modinfo.js';
import type { Cache } from '../core/cache.js';

/** Bump when the index format or the way it is built changes. */
export const MODULE_INDEX_VERSION = 1;
const CACHE_KIND = 'module-index';

export interface ModuleIndex {
  /** The modules directory, e.g. /lib/modules/6.1.0-56-amd64. */
  dir: string;
  /** How it was built; `cached` = a scan index read back from the cache. */
  source: 'modules.dep' | 'scan' | 'cached';
  /** Module name (`_` form) → path relative to `dir` (e.g. kernel/fs/ext4/ext4.ko). */
  paths: Map<string, string>;
  /** [alias pattern, module name] pairs, in the order kmod would match them. */
  aliases: [string, string][];
  /** Modules built into the kernel (modules.builtin), `_` form. */
  builtin: Set<string>;
  /** Aliases of built-in modules (modules.builtin.modinfo): alias pattern → module name. */
  builtinAliases: [string, string][];
}

const MODULE_FILE_RE = /\.ko(\.(gz|xz|zst))?$/;

/** `xen-netfront` and `xen_netfront` are the same module (the kernel uses `_`). */
export function normalizeModuleName(name: string): string {
  return name.replace(/-/g, '_');
}

async function readOptional(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new DomuError(`${path}: cannot read: ${errorMessage(e)}`, { cause: e });
  }
}

/** modules.builtin: one `kernel/<path>.ko` per line. */
function parseBuiltin(text: string | undefined): Set<string> {
  const out = new Set<string>();
  for (const line of (text ?? '').split('\n')) if (line.trim()) out.add(moduleNameOf(line.trim()));
  return out;
}

/** modules.builtin.modinfo: NUL-separated `<module>.<key>=<value>`; we want the aliases. */
function parseBuiltinAliases(data: Buffer | undefined): [string, string][] {
  const out: [string, string][] = [];
  if (!data) return out;
  for (const entry of data.toString('utf8').split('\0')) {
    const m = /^([^.=]+)\.alias=(.+)$/.exec(entry);
    if (m) out.push([m[2]!, normalizeModuleName(m[1]!)]);
  }
  return out;
}

/** modules.alias: `alias <pattern> <module>` lines. */
function parseAliasFile(text: string): [string, string][] {
  const out: [string, string][] = [];
  for (const line of text.split('\n')) {
    const m = /^alias\s+(\S+)\s+(\S+)\s*$/.exec(line);
    if (m) out.push([m[1]!, normalizeModuleName(m[2]!)]);
  }
  return out;
}

/**
 * modules.dep: `<path>: <dep path> …`; we keep the name → path map. Paths are relative to the
 * modules directory (old depmod wrote them absolute: those inside `dir` are made relative); a path
 * that leaves the directory is refused, since the module files named here are copied into the guest.
 */
function parseDepFile(text: string, file: string, dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const hint = 'regenerate it with depmod, or remove it so that domu indexes the modules itself';
  const base = posix.normalize(dir.replace(/\/+$/, ''));
  text.split('\n').forEach((line, i) => {
    if (!line.trim() || line.startsWith('#')) return;
    const colon = line.indexOf(':');
    if (colon <= 0) throw new DomuError(`${file}:${i + 1}: not a modules.dep line (expected "<module path>: <dependencies>")`, { hint });
    let path = line.slice(0, colon).trim();
    if (path.startsWith('/')) {
      const abs = posix.normalize(path);
      if (abs.startsWith(`${base}/`)) path = abs.slice(base.length + 1);
    }
    const norm = posix.normalize(path);
    if (path.includes('\0') || norm.startsWith('/') || norm === '..' || norm.startsWith('../') || !MODULE_FILE_RE.test(norm)) {
      throw new DomuError(`${file}:${i + 1}: the module path ${JSON.stringify(path)} ${MODULE_FILE_RE.test(norm) ? 'leaves the modules directory' : 'is not a module file (.ko, .ko.gz, .ko.xz or .ko.zst)'}`, { hint });
    }
    out.set(moduleNameOf(norm), norm);
  });
  return out;
}

/**
 * Every module file under `dir`, relative and sorted, with its size and mtime (the fingerprint).
 * Synchronous on purpose: about 5000 readdir/stat calls, which take 30 ms done in a row and three
 * times as long through the thread pool, and the warm path of the closure is this walk.
 */
export function listModuleFiles(dir: string): { path: string; size: bigint; mtimeNs: bigint }[] {
  const out: { path: string; size: bigint; mtimeNs: bigint }[] = [];
  const walk = (abs: string, rel: string) => {
    for (const e of readdirSync(abs, { withFileTypes: true })) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(join(abs, e.name), r);
      else if (e.isFile() && MODULE_FILE_RE.test(e.name)) {
        const st = statSync(join(abs, e.name), { bigint: true });
        out.push({ path: r, size: st.size, mtimeNs: st.mtimeNs });
      }
    }
  };
  try {
    walk(dir, '');
  } catch (e) {
    throw new DomuError(`${dir}: cannot read the modules directory: ${errorMessage(e)}`, { cause: e });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** Run `fn` over `items` with at most `limit` at a time. */
export async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!, i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** The tree's fingerprint: each module file's path, size and mtime, and the builtin lists. */
async function fingerprint(dir: string, files: ReturnType<typeof listModuleFiles>): Promise<string> {
  const builtin = (await readOptional(join(dir, 'modules.builtin'))) ?? '';
  const builtinInfo = await readFile(join(dir, 'modules.builtin.modinfo')).catch(() => Buffer.alloc(0));
  const lines = files.map((f) => `${f.path}\0${f.size}\0${f.mtimeNs}`).join('\n');
  return sha256(`domu module index v${MODULE_INDEX_VERSION}\n${lines}\n${sha256(builtin)}\n${sha256(builtinInfo)}`);
}

interface StoredIndex {
  version: number;
  paths: [string, string][];
  aliases: [string, string][];
}

export interface IndexOptions {
  /** Where scan indexes are kept; none: always scan. */
  cache?: Cache | undefined;
  /** For decompressing .ko.xz/.ko.zst during a scan. */
  env?: ExecEnv | undefined;
  /** Ignore modules.dep even when present (used to compare both ways). */
  ignoreModulesDep?: boolean;
  progress?: (text: string) => void;
}

const STORED_INDEX = 'index.json';
const isPairs = (v: unknown): v is [string, string][] => Array.isArray(v) && v.every((p) => Array.isArray(p) && p.length === 2 && typeof p[0] === 'string' && typeof p[1] === 'string');

/**
 * A scan index from the cache entry `module-index/<fingerprint>`, proved against the entry's
 * manifest (hashed: ~1.5 MB, ~1 ms) and checked for shape; a corrupt or garbled one is discarded
 * with a warning and the caller scans the tree again. Never trusted otherwise.
 */
async function readStoredIndex(cache: Cache, key: string, env: ExecEnv | undefined): Promise<StoredIndex | undefined> {
  let stored: StoredIndex | undefined;
  const hit = await cache.lookup(CACHE_KIND, key, {
    log: env?.log,
    redo: 'indexing the modules again',
    check: async (d) => {
      let v: Partial<StoredIndex>;
      try {
        v = JSON.parse(await readFile(join(d, STORED_INDEX), 'utf8')) as Partial<StoredIndex>;
      } catch {
        return `${STORED_INDEX} garbled (not JSON)`;
      }
      if (v.version !== MODULE_INDEX_VERSION) return `${STORED_INDEX} is format ${String(v.version)}, not ${MODULE_INDEX_VERSION}`;
      if (!isPairs(v.paths) || !isPairs(v.aliases)) return `${STORED_INDEX} garbled (bad paths or aliases)`;
      stored = v as StoredIndex;
      return undefined;
    },
  });
  return hit ? stored : undefined;
}

/** Keep a scan index in the cache. Best effort: an unwritable cache only costs the next run a scan. */
async function writeStoredIndex(cache: Cache, key: string, stored: StoredIndex): Promise<void> {
  await cache.store(CACHE_KIND, key, (d) => writeFile(join(d, STORED_INDEX), JSON.stringify(stored))).catch(() => {});
}

/** Build (or read back) the index of a modules directory. */
export async function indexModules(dir: string, opts: IndexOptions = {}): Promise<ModuleIndex> {
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new DomuError(`${dir}: not a kernel modules directory (${errorMessage(e)})`, { hint: 'point kernel.modules at /lib/modules/<release>' });
  }
  const builtin = parseBuiltin(await readOptional(join(dir, 'modules.builtin')));
  const builtinAliases = parseBuiltinAliases(await readFile(join(dir, 'modules.builtin.modinfo')).catch(() => undefined));

  const depText = opts.ignoreModulesDep ? undefined : await readOptional(join(dir, 'modules.dep'));
  if (depText !== undefined) {
    const aliasText = (await readOptional(join(dir, 'modules.alias'))) ?? '';
    return { dir, source: 'modules.dep', paths: parseDepFile(depText, join(dir, 'modules.dep'), dir), aliases: parseAliasFile(aliasText), builtin, builtinAliases };
  }

  const files = listModuleFiles(dir);
  const key = opts.cache ? await fingerprint(dir, files) : undefined;
  const memo = key ? memory.get(key) : undefined;
  if (memo) return { ...memo, dir };
  const stored = opts.cache && key ? await readStoredIndex(opts.cache, key, opts.env) : undefined;
  if (stored) return remember(key!, { dir, source: 'cached', paths: new Map(stored.paths), aliases: stored.aliases, builtin, builtinAliases });

  // Plain .ko files are read in-process; compressed ones spawn a decompressor each, so fewer at once.
  const compressed = files.some((f) => !f.path.endsWith('.ko'));
  const limit = compressed ? Math.max(2, availableParallelism()) : 32;
  let done = 0;
  const infos = await mapLimit(files, limit, async ({ path: f }) => {
    const info = await readModinfo(join(dir, f), opts.env);
    if (++done % 500 === 0) opts.progress?.(`indexing modules ${done}/${files.length}`);
    return { path: f, name: normalizeModuleName(info.name), aliases: info.aliases };
  });
  const paths = new Map<string, string>();
  const aliases: [string, string][] = [];
  for (const m of infos) {
    if (!paths.has(m.name)) paths.set(m.name, m.path);
    for (const a of m.aliases) aliases.push([a, m.name]);
  }
  if (opts.cache && key) await writeStoredIndex(opts.cache, key, { version: MODULE_INDEX_VERSION, paths: [...paths], aliases });
  const index: ModuleIndex = { dir, source: 'scan', paths, aliases, builtin, builtinAliases };
  return key ? remember(key, index) : index;
}

/**
 * Indexes read in this process, by fingerprint: a build resolves the guest's modules and the
 * ramdisk's from the same tree, and parsing the stored index twice costs ~50 ms.
 */
const memory = new Map<string, ModuleIndex>();
function remember(key: string, index: ModuleIndex): ModuleIndex {
  memory.set(key, { ...index, source: 'cached' });
  return index;
}

/** A module alias pattern (fnmatch: `*`, `?`, `[…]`) as a RegExp; plain strings need none. */
function globToRegExp(pattern: string): RegExp {
  let re = '';
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        let body = pattern.slice(i + 1, end);
        if (body.startsWith('!')) body = `^${body.slice(1)}`;
        re += `[${body.replace(/\\/g, '\\\\')}]`;
        i = end;
      }
    } else re += c.replace(/[.+^${}()|\\/]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

const WILDCARD = /[*?[]/;
const compiled = new Map<string, RegExp>();

/** kmod's alias_normalize: `-` → `_`, except inside `[…]` where `-` is a range. */
export function normalizeAlias(alias: string): string {
  if (!alias.includes('[')) return alias.replaceAll('-', '_');
  let out = '';
  let inBracket = false;
  for (const c of alias) {
    if (c === '[') inBracket = true;
    else if (c === ']') inBracket = false;
    out += c === '-' && !inBracket ? '_' : c;
  }
  return out;
}

/** Whether `name` matches the alias pattern (as kmod's fnmatch does, both sides normalized). */
export function aliasMatches(pattern: string, name: string): boolean {
  return matchesNormalized(pattern, normalizeAlias(name));
}

function matchesNormalized(pattern: string, n: string): boolean {
  const wild = pattern.search(WILDCARD);
  if (wild < 0) return normalizeAlias(pattern) === n;
  // The literal head must match first: this skips compiling nearly all of the ~26000 patterns
  // (pci:v…, usb:v…) for a name like crypto-crc32c.
  if (!n.startsWith(normalizeAlias(pattern.slice(0, wild)))) return false;
  return regExpOf(pattern).test(n);
}

function regExpOf(pattern: string): RegExp {
  let re = compiled.get(pattern);
  if (!re) {
    re = globToRegExp(normalizeAlias(pattern));
    compiled.set(pattern, re);
  }
  return re;
}

/**
 * The patterns of one alias list sorted for lookup, made once per list: plain patterns by their
 * normalized text, wildcard ones by the first character of their normalized literal head (those
 * with no head apart). A lookup then tests only the patterns that can match, with the same test
 * as matchesNormalized, and gives the matches in list order.
 */
interface AliasLookup {
  size: number;
  exact: Map<string, number[]>;
  byFirst: Map<string, number[]>;
  headless: number[];
  heads: string[];
}

const lookups = new WeakMap<readonly [string, string][], AliasLookup>();

function lookupOf(pairs: readonly [string, string][]): AliasLookup {
  const known = lookups.get(pairs);
  if (known && known.size === pairs.length) return known;
  const l: AliasLookup = { size: pairs.length, exact: new Map(), byFirst: new Map(), headless: [], heads: [] };
  const add = (m: Map<string, number[]>, k: string, i: number) => {
    const list = m.get(k);
    if (list) list.push(i);
    else m.set(k, [i]);
  };
  pairs.forEach(([pattern], i) => {
    const wild = pattern.search(WILDCARD);
    if (wild < 0) return add(l.exact, normalizeAlias(pattern), i);
    const head = normalizeAlias(pattern.slice(0, wild));
    l.heads[i] = head;
    if (head) add(l.byFirst, head[0]!, i);
    else l.headless.push(i);
  });
  lookups.set(pairs, l);
  return l;
}

/** The module names an alias resolves to, in index order, without repeats. */
export function resolveAlias(pairs: readonly [string, string][], name: string): string[] {
  const l = lookupOf(pairs);
  const n = normalizeAlias(name);
  const hits = [...(l.exact.get(n) ?? [])];
  for (const list of [l.byFirst.get(n.charAt(0)) ?? [], l.headless]) {
    for (const i of list) if (n.startsWith(l.heads[i]!) && regExpOf(pairs[i]![0]).test(n)) hits.push(i);
  }
  hits.sort((a, b) => a - b);
  const out: string[] = [];
  for (const i of hits) {
    const module = pairs[i]![1];
    if (!out.includes(module)) out.push(module);
  }
  return out;
}
