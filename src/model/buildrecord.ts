// `out/build.json`: what a build produced and from what — the provenance `domu release` writes
// into its manifest, the artifacts `domu verify` boots, and the keys that let the next build
// see that the image in --out is already up to date (same inputs, same file: not rewritten).
// Written last, atomically, only after every stage succeeded; paths are relative to --out.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic } from '../core/atomic.js';
import { hashValue } from '../core/hash.js';
import type { Description, XenType } from './schema.js';
import type { GuestNetwork } from './network.js';

export const BUILD_RECORD = 'build.json';
export const BUILD_RECORD_VERSION = 1;

export interface ArtifactRecord {
  /** Relative to --out. */
  path: string;
  sha256: string;
  apparentBytes: number;
  allocatedBytes: number;
}

export interface BuildRecord {
  version: number;
  domu: string;
  /** The resolved description the build ran with. */
  description: Description;
  busybox: {
    requestedVersion: string;
    resolvedVersion: string;
    provider: string;
    origin: string;
    substitution: { requested: string; used: string; reason: string; from: string } | null;
    tarballSha256: string;
    configSha256: string;
    applets: number | null;
    compileKey: string;
  };
  kernel: { release: string; origin: string; package: string | null; version: string | null } | null;
  /**
   * The guest as Xen starts it: its type (xen.type with its default), whether the kernel boots as
   * PVH and how that is known (checked for pvh only; pvh null: nothing told), the kernel command
   * line of the domain config, and eth0's settings (/etc/network.conf in the image).
   */
  guest: { type: XenType; pvh: { pvh: boolean | null; evidence: string } | null; cmdline: string; network: GuestNetwork };
  modules: { name: string; dest: string; vermagic: string; verdict: string; size: number }[];
  /** Names of the modules in the generated ramdisk, in load order. */
  ramdiskModules: string[];
  sourceDateEpoch: number;
  /** Versions of the tools that shaped the artifacts. */
  tools: Record<string, string>;
  image: ArtifactRecord & { uuid: string; populate: 'rootless' | 'mount'; reproducible: boolean; inodesUsed: number; files: number };
  /** Kernel and ramdisk in boot/ (when shipped). */
  boot: { kernel: ArtifactRecord | null; ramdisk: ArtifactRecord | null };
  /** The generated ramdisk (when kernel.ramdisk is generate), as the initramfs stage reported it. */
  initramfs: { path: string; sha256: string; size: number; uncompressedSize: number; entries: number; modules: string[]; loadList: string } | null;
  /** Generated config files (relative paths). */
  configs: string[];
  /** Where the guest's disk lives (store.disk) and the name the configs give it. */
  disk: { store: 'file' | 'lun'; target: string };
  /**
   * The last publish of this build onto the guest's LUN (store.disk lun): the device, what it
   * cost and the image's sha256 the device now holds. Added after the publish; a fact about the
   * store, not about the build, so not part of buildHash.
   */
  lunPublish?: { device: string; bytesWritten: number; bytesChecked: number; sha256: string };
  /**
   * Everything the image depends on (rootfs content, device nodes, size, label, populate,
   * epoch, tool versions); equal keys → byte-identical image.
   */
  imageKey: string;
  /** The image file as written, to tell that --out still holds it unchanged. */
  imageFile: { ino: number; mtimeMs: number; size: number };
  /** Everything the generated ramdisk depends on; null without one. */
  ramdiskKey: string | null;
  ramdiskFile: { ino: number; mtimeMs: number; size: number } | null;
  /** Hash of this record's content fields (not the file identity): names a release. */
  buildHash: string;
}

export async function readBuildRecord(outDir: string): Promise<BuildRecord | undefined> {
  try {
    const r = JSON.parse(await readFile(join(outDir, BUILD_RECORD), 'utf8')) as BuildRecord;
    return r.version === BUILD_RECORD_VERSION ? r : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The record's content hash: everything but the file identities, the hash itself and how this
 * run obtained the tarball (`provider`: "cache" on a rebuild, "local" or "debian" the first
 * time — the tarball's sha256 and origin already say what it is).
 */
export function buildHashOf(r: Omit<BuildRecord, 'buildHash' | 'imageFile' | 'ramdiskFile'>): string {
  const { provider: _provider, ...busybox } = r.busybox;
  const { lunPublish: _published, ...content } = r;
  return hashValue({ ...content, busybox });
}

/** After a publish onto the LUN: the record in `outDir` says where its image went (lunPublish). */
export async function recordLunPublish(outDir: string, lun: { device: string; bytesWritten: number; bytesChecked: number; sha256: string }): Promise<void> {
  const r = await readBuildRecord(outDir);
  if (!r) return; // no record (a build that did not finish): nothing to add to
  const { device, bytesWritten, bytesChecked, sha256 } = lun;
  await writeBuildRecord(outDir, { ...r, lunPublish: { device, bytesWritten, bytesChecked, sha256 } });
}

export async function writeBuildRecord(outDir: string, r: BuildRecord): Promise<void> {
  await writeFileAtomic(join(outDir, BUILD_RECORD), `${JSON.stringify(r, null, 2)}\n`);
}
