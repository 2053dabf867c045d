// What a release is made of (release.ts writes it): the names of its files, the image compression
// and the command that restores it, the configs tarball and the manifest. Every byte is a function
// of build.json alone (same build → same bytes).
import { basename } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pack as tarPack, type Header } from 'tar-stream';
import { commandLine } from '../core/exec.js';
import type { BuildRecord } from '../model/buildrecord.js';

export const RELEASE_FORMAT = 'domu-release/1';
export const MANIFEST = 'manifest.json';
export const SUMS = 'SHA256SUMS';
export const CONFIGS_TARBALL = 'configs.tar.gz';

/**
 * The image compression: zstd -19, one thread. Measured on the real guest image (1 GiB apparent,
 * 37 MB allocated) by bench/release.ts, medians of 3 on a 2-CPU VM, zstd 1.5.4 / xz 5.4.1
 * (restore: into a sparse file, as a release user does):
 *
 *                                   size     compress   restore
 *   zstd -3 -T1                    1.36 MB     0.7 s     0.24 s
 *   zstd -9 -T1                    1.28 MB     1.4 s     0.24 s
 *   zstd -19 -T1                   1.17 MB     2.0 s     0.28 s
 *   zstd -19 --long=27 -T1         1.17 MB     2.9 s     0.37 s   (116 bytes smaller)
 *   zstd --ultra -22 --long=27     1.17 MB     3.6 s     0.37 s
 *   xz -6 -T1                      1.23 MB    15.0 s     1.87 s
 *   xz -9 -T1                      1.23 MB    13.5 s     1.92 s
 *
 * zstd -19 is both the smallest and ten times faster than xz both ways: the image is mostly zeros
 * (holes, the journal), which xz chews through at ~70 MB/s and zstd skips at GB/s; what is left
 * (busybox, modules, metadata) compresses alike. --long buys nothing here (the image's repeats are
 * zeros, which the default window already sees) and would make decoders need `--long` for larger
 * windows. -T1 (one worker) keeps the output independent of the machine's CPU count; zstd writes
 * no name or time into the frame, so the output is a function of the image and zstd's version
 * (recorded in the manifest). `zstd -d --sparse` restores the holes.
 */
export const IMAGE_COMPRESSION = { tool: 'zstd', suffix: '.zst', args: ['-19', '-T1'] } as const;

/** The exact command that turns the released file back into the raw, sparse image. */
export function restoreArgv(compressed: string, raw: string): string[] {
  return ['zstd', '-d', '--sparse', compressed, '-o', raw];
}

export function restoreCommand(compressed: string, raw: string): string {
  const [tool, ...args] = restoreArgv(compressed, raw);
  return commandLine(tool!, args);
}

// ---------------------------------------------------------------------------------------------
// The configs tarball

export interface TarFile {
  /** Relative path, `/`-separated. */
  path: string;
  data: Buffer;
}

/**
 * A deterministic .tar.gz of `files`: every parent directory as its own entry, entries sorted by
 * name, mtime `epoch`, uid/gid 0 (root/root), modes 0755 (directories) and 0644 (files), gzip
 * level 9 with no name and mtime 0 in its header (node:zlib writes none).
 */
export async function configsTarball(files: readonly TarFile[], epoch: number): Promise<Buffer> {
  const mtime = new Date(epoch * 1000);
  const owner = { uid: 0, gid: 0, uname: 'root', gname: 'root', mtime };
  const entries = new Map<string, { header: Partial<Header> & { name: string }; data?: Buffer }>();
  for (const f of files) {
    const parts = f.path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = `${parts.slice(0, i).join('/')}/`;
      entries.set(dir, { header: { ...owner, name: dir, type: 'directory', mode: 0o755 } });
    }
    entries.set(f.path, { header: { ...owner, name: f.path, type: 'file', mode: 0o644, size: f.data.length }, data: f.data });
  }
  const pack = tarPack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  for (const name of [...entries.keys()].sort(byteOrder)) {
    const e = entries.get(name)!;
    await new Promise<void>((resolveEntry, reject) => {
      const done = (err?: Error | null) => (err ? reject(err) : resolveEntry());
      if (e.data) pack.entry(e.header, e.data, done);
      else pack.entry(e.header, done);
    });
  }
  pack.finalize();
  await collected;
  return gzipSync(Buffer.concat(chunks), { level: 9 });
}

export function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

// ---------------------------------------------------------------------------------------------
// The manifest

export interface ReleaseFile {
  name: string;
  sha256: string;
  bytes: number;
}

export interface ManifestInput {
  name: string;
  record: BuildRecord;
  image: ReleaseFile;
  kernel: ReleaseFile | null;
  ramdisk: ReleaseFile | null;
  configs: (ReleaseFile & { files: { path: string; sha256: string }[] }) | null;
  /** Versions of what wrote the release's bytes. */
  releasedWith: Record<string, string>;
}

/** manifest.json: everything from build.json a consumer needs, and how to put each file back. */
export function releaseManifest(m: ManifestInput): Record<string, unknown> {
  const r = m.record;
  const raw = basename(r.image.path);
  const boot = (f: ReleaseFile | null) => (f ? { ...f, storePath: `boot/${f.name}` } : null);
  return {
    format: RELEASE_FORMAT,
    name: m.name,
    guest: r.description.guest.name,
    buildHash: r.buildHash,
    sourceDateEpoch: r.sourceDateEpoch,
    busybox: {
      // Not `provider`: how one run obtained the tarball ("cache" on a rebuild) is outside the build
      // hash, so it cannot be in a release that the hash names (origin and sha256 say what it is).
      requestedVersion: r.busybox.requestedVersion,
      resolvedVersion: r.busybox.resolvedVersion,
      origin: r.busybox.origin,
      substitution: r.busybox.substitution,
      tarballSha256: r.busybox.tarballSha256,
      configSha256: r.busybox.configSha256,
      applets: r.busybox.applets,
    },
    kernel: r.kernel,
    modules: r.modules.map((x) => ({ name: x.name, vermagic: x.vermagic, verdict: x.verdict, dest: x.dest, size: x.size })),
    ramdiskModules: r.ramdiskModules,
    tools: r.tools,
    releasedWith: m.releasedWith,
    image: {
      ...m.image,
      compression: { tool: IMAGE_COMPRESSION.tool, args: [...IMAGE_COMPRESSION.args] },
      raw: {
        name: raw,
        sha256: r.image.sha256,
        apparentBytes: r.image.apparentBytes,
        allocatedBytes: r.image.allocatedBytes,
        uuid: r.image.uuid,
        populate: r.image.populate,
        reproducible: r.image.reproducible,
      },
      restore: { argv: restoreArgv(m.image.name, raw), command: restoreCommand(m.image.name, raw), sparse: true, storePath: r.image.path },
    },
    boot: { kernel: boot(m.kernel), ramdisk: boot(m.ramdisk) },
    configs: m.configs ? { ...m.configs, restore: { command: `tar -xzf ${m.configs.name} -C ${r.description.store.path}` } } : null,
    description: r.description,
  };
}

