// "Up to date": a build whose inputs did not change must not rewrite the image (a running domain
// may use it, and rewriting 1 GiB costs time). The rootfs and image stages are keyed by
// everything that determines the image's bytes, computed BEFORE the staging tree is assembled:
// the compiled install tree (its cache key), the skel's files, the device table, the guest
// settings its templates see, the module files and /etc/modules, /etc/network.conf, the size, label, population
// mode and SOURCE_DATE_EPOCH. When `out/build.json` holds the same key and the image file in
// --out is still the one that build wrote (same inode, size and mtime), both stages are skipped.
// The generated ramdisk is keyed the same way (busybox, modules, /init, epoch).
import { lstat, readdir, readFile, readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { hashValue, sha256File } from '../core/hash.js';
import { ROOTFS_VERSION } from '../stages/rootfs.js';
import type { ModuleFile } from '../stages/rootfs.js';
import type { BuildRecord } from '../model/buildrecord.js';
import type { Cache } from '../core/cache.js';
import type { Description } from '../model/schema.js';

/** Bump when the image or ramdisk a key names would come out differently. */
const KEY_VERSION = 1;

export interface FileIdentity {
  ino: number;
  mtimeMs: number;
  size: number;
}

export async function fileIdentity(path: string): Promise<FileIdentity | undefined> {
  try {
    const st = await stat(path);
    return { ino: st.ino, mtimeMs: st.mtimeMs, size: st.size };
  } catch {
    return undefined;
  }
}

export function sameIdentity(a: FileIdentity | undefined, b: FileIdentity | undefined): boolean {
  return !!a && !!b && a.ino === b.ino && a.mtimeMs === b.mtimeMs && a.size === b.size;
}

/** How a key reads a file's sha256 (the cache's identity-keyed FileHashes in a run). */
export type HashFn = (path: string) => Promise<string>;

/** The run's remembered file hashes (core/filehashes.ts); with --no-cache every file is read. */
export function hashOf(cache: Cache, noCache: boolean | undefined): HashFn {
  return noCache ? sha256File : (p) => cache.fileHashes.sha256(p);
}

/** Every entry of a directory tree: path, type, mode, and content hash or link target. */
async function treeDigest(root: string, hash: HashFn): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    const names = (await readdir(join(root, rel))).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const p = join(root, r);
      const st = await lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (st.isDirectory()) {
        out.push(`d ${r} ${mode}`);
        await walk(r);
      } else if (st.isSymbolicLink()) out.push(`l ${r} ${await readlink(p)}`);
      else out.push(`f ${r} ${mode} ${await hash(p)}`);
    }
  };
  await walk('');
  return out;
}

export interface ImageKeyInput {
  compileKey: string;
  skel: string;
  deviceTable: string;
  guest: Description['guest'];
  modules: { files: ModuleFile[]; etcModules: string } | undefined;
  /** The text of /etc/network.conf (its gateway may come from network.gateway, outside guest). */
  network: string;
  size: number;
  populate: string;
  sourceDateEpoch: number;
  hash?: HashFn;
}

/** The key of the image's bytes (see the file comment). */
export async function imageKey(i: ImageKeyInput): Promise<string> {
  const hash = i.hash ?? sha256File;
  const modules = i.modules
    ? { etc: i.modules.etcModules, files: await Promise.all(i.modules.files.map(async (f) => [f.dest, await hash(f.src)])) }
    : null;
  return hashValue({
    v: KEY_VERSION,
    rootfs: ROOTFS_VERSION,
    compile: i.compileKey,
    skel: await treeDigest(i.skel, hash),
    deviceTable: await readFile(i.deviceTable, 'utf8'),
    guest: i.guest,
    modules,
    network: i.network,
    size: i.size,
    populate: i.populate,
    epoch: i.sourceDateEpoch,
  });
}

export interface RamdiskKeyInput {
  busybox: string;
  release: string;
  modules: { name: string; file: string; path: string }[];
  initScript: string;
  sourceDateEpoch: number;
  hash?: HashFn;
}

export async function ramdiskKey(i: RamdiskKeyInput): Promise<string> {
  const hash = i.hash ?? sha256File;
  return hashValue({
    v: KEY_VERSION,
    busybox: await hash(i.busybox),
    release: i.release,
    modules: await Promise.all(i.modules.map(async (m) => [m.name, m.path, await hash(m.file)])),
    init: await hash(i.initScript),
    epoch: i.sourceDateEpoch,
  });
}

/** The record's image, when it is still the file in --out and was built from `key`. */
export async function currentImage(record: BuildRecord | undefined, outDir: string, key: string): Promise<BuildRecord['image'] | undefined> {
  if (!record || record.imageKey !== key) return undefined;
  const id = await fileIdentity(join(outDir, record.image.path));
  return sameIdentity(id, record.imageFile) ? record.image : undefined;
}
