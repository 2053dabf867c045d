// A kernel module's .modinfo, read without kmod: plain `.ko` or compressed `.ko.gz`, `.ko.xz`,
// `.ko.zst` (the compressed file holds the same ELF object; facts.md).
//
// Decompression: gzip through node:zlib. xz and zstd through the native `xz -dc` / `zstd -dc`
// programs (via exec.ts, argument arrays, no shell): Node 20 has no zstd in zlib, and the npm
// xz/zstd ports are either slow (pure-JS) or unmaintained native add-ons, while xz-utils and
// zstd are small, ubiquitous Debian packages.
import { access, constants, readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { parseElf, utf8 } from './elf.js';
import { DomuError, errorMessage } from '../core/errors.js';
import { ExecError, spawnStream, type ExecEnv } from '../core/exec.js';
import type { Logger } from '../core/log.js';

export interface ModuleInfo {
  file: string;
  /** `name=` (e.g. xen_netfront), else the file name with `-` → `_`. */
  name: string;
  /** Symbol dependencies (`depends=`, comma-separated); [] when empty. */
  depends: string[];
  softdepPre: string[];
  softdepPost: string[];
  /** e.g. `6.1.0-41-amd64 SMP preempt mod_unload modversions ` (trailing space kept). */
  vermagic: string;
  /** The first word of vermagic: the kernel release the module was built for. */
  release: string;
  aliases: string[];
  license?: string | undefined;
  /** `intree=Y` */
  intree: boolean;
  /** Every .modinfo key with its values in order. */
  fields: Record<string, string[]>;
}

export type ModuleCompression = 'none' | 'gzip' | 'xz' | 'zstd';

export function moduleCompression(path: string): ModuleCompression {
  if (path.endsWith('.ko.gz')) return 'gzip';
  if (path.endsWith('.ko.xz')) return 'xz';
  if (path.endsWith('.ko.zst')) return 'zstd';
  return 'none';
}

/** The module name the kernel derives from a file name: `xen-netfront.ko.xz` → `xen_netfront`. */
export function moduleNameOf(path: string): string {
  return basename(path).replace(/\.ko(\.(gz|xz|zst))?$/, '').replace(/-/g, '_');
}

/** Parse `softdep` values such as `pre: crypto-crc32c` or `pre: a b post: c`. */
export function parseSoftdep(values: readonly string[]): { pre: string[]; post: string[] } {
  const pre: string[] = [];
  const post: string[] = [];
  for (const v of values) {
    let into: string[] | undefined;
    for (const word of v.split(/\s+/).filter(Boolean)) {
      if (word === 'pre:') into = pre;
      else if (word === 'post:') into = post;
      else if (word.startsWith('pre:')) (into = pre).push(word.slice(4));
      else if (word.startsWith('post:')) (into = post).push(word.slice(5));
      else into?.push(word);
    }
  }
  return { pre, post };
}

/** A ModuleInfo from the raw .modinfo bytes. */
export function moduleInfoFromSection(file: string, section: Uint8Array): ModuleInfo {
  const fields = modinfoFields(parseModinfo(section));
  const vermagic = fields.vermagic?.[0] ?? '';
  const soft = parseSoftdep(fields.softdep ?? []);
  return {
    file,
    name: fields.name?.[0] ?? moduleNameOf(file),
    depends: (fields.depends ?? []).flatMap((d) => d.split(',')).map((d) => d.trim()).filter(Boolean),
    softdepPre: soft.pre,
    softdepPost: soft.post,
    vermagic,
    release: vermagic.trim().split(/\s+/)[0] ?? '',
    aliases: fields.alias ?? [],
    license: fields.license?.[0],
    intree: fields.intree?.[0] === 'Y',
    fields,
  };
}

const silent: Logger = { info: () => {}, warn: () => {}, debug: () => {}, child: () => silent };

function defaultEnv(): ExecEnv {
  return { log: silent, signal: new AbortController().signal };
}

/** The decompressed content of an xz or zstd file (`xz -dc` / `zstd -dc`). */
export async function decompressFile(env: ExecEnv, program: 'xz' | 'zstd', path: string): Promise<Buffer> {
  const label = program === 'xz' ? 'xz' : 'zstd';
  const child = await spawnStream(env, program, ['-dc', '--', path], { missingHint: `install ${program === 'xz' ? 'xz-utils' : 'zstd'}` });
  const chunks: Buffer[] = [];
  try {
    for await (const c of child.stdout) chunks.push(c as Buffer);
    await child.exit;
  } catch (e) {
    child.kill();
    if (e instanceof ExecError) {
      const why = e.stderr.trim().split('\n').pop() ?? '';
      throw new DomuError(`${path}: truncated or corrupt ${label} data${why ? ` (${why})` : ''}`, { cause: e });
    }
    throw e;
  }
  return Buffer.concat(chunks);
}

/** The module's ELF bytes, decompressed according to its extension. */
export async function readModuleBytes(path: string, env: ExecEnv = defaultEnv()): Promise<Buffer> {
  const kind = moduleCompression(path);
  if (kind === 'xz' || kind === 'zstd') {
    // A missing file must not be reported as corrupt data.
    await access(path, constants.R_OK).catch((e: unknown) => {
      throw new DomuError(`${path}: cannot read: ${errorMessage(e)}`, { cause: e });
    });
    return decompressFile(env, kind, path);
  }
  let raw: Buffer;
  try {
    raw = await readFile(path);
  } catch (e) {
    throw new DomuError(`${path}: cannot read: ${errorMessage(e)}`, { cause: e });
  }
  if (kind === 'none') return raw;
  try {
    return await promisify(gunzip)(raw);
  } catch (e) {
    throw new DomuError(`${path}: truncated or corrupt gzip data (${errorMessage(e)})`, { cause: e });
  }
}

/** Read a kernel module's .modinfo (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`). */
export async function readModinfo(path: string, env: ExecEnv = defaultEnv()): Promise<ModuleInfo> {
  const bytes = await readModuleBytes(path, env);
  const elf = parseElf(bytes, path);
  const section = elf.section('.modinfo');
  if (!section) throw new DomuError(`${path}: no .modinfo section (not a kernel module?)`);
  return moduleInfoFromSection(path, section);
}

// ---------------------------------------------------------------------------------------------
// The .modinfo section: NUL-separated `key=value` strings

export interface ModinfoEntry {
  key: string;
  value: string;
}

/** The `key=value` entries of a kernel module's .modinfo section, in order; keys may repeat. */
export function parseModinfo(data: Uint8Array): ModinfoEntry[] {
  const out: ModinfoEntry[] = [];
  let start = 0;
  while (start < data.length) {
    let end = data.indexOf(0, start);
    if (end < 0) end = data.length;
    if (end > start) {
      const text = utf8(data.subarray(start, end));
      const eq = text.indexOf('=');
      out.push(eq < 0 ? { key: text, value: '' } : { key: text.slice(0, eq), value: text.slice(eq + 1) });
    }
    start = end + 1;
  }
  return out;
}

/** Modinfo entries grouped by key, values in order: { alias: ['a', 'b'], license: ['GPL'] }. */
export function modinfoFields(entries: readonly ModinfoEntry[]): Record<string, string[]> {
  const out: Record<string, string[]> = Object.create(null) as Record<string, string[]>;
  for (const { key, value } of entries) (out[key] ??= []).push(value);
  return out;
}
