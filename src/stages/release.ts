// `domu release` (design.md, CLI): versioned, reproducible release artifacts of the build in --out.
//
// checkBuild: out/build.json is read and its build hash recomputed (an edited record is refused);
//   every artifact it names is compared with it: the image (size and sha256, holes not read), the
//   kernel and the ramdisk (sha256), every generated config (its domu-content-sha256 header). A
//   build in --out that changed after `domu build` recorded it is never released.
// writeRelease: dist/<guest>-<busybox version>-<build hash, 12 digits>/ is written in a temporary
//   directory beside it and renamed into place, so a failure leaves nothing half-written:
//     <image>.zst       the raw image compressed (IMAGE_COMPRESSION below)
//     vmlinuz-<r>, initrd-<r>-<guest>.gz   the boot files, as in the store's boot/
//     configs.tar.gz    the generated configs, store-relative paths (tar-stream, see configsTarball)
//     manifest.json     provenance from build.json and how to restore each file (releaseManifest)
//     SHA256SUMS        `sha256sum -c` format, every other file
//   What goes in is checked again in the temporary directory: the copies of kernel and ramdisk are
//   hashed, and the compressed image is restored with the manifest's own command and hashed, so a
//   file that changed between the two stages is not released either. Same build → same bytes:
//   every file and its mode and mtime (SOURCE_DATE_EPOCH) are functions of build.json alone.
//   A release directory of the same name that already exists is compared file by file: identical
//   is reported as already there, anything else is an error (a name is never reused for other bytes).
import { chmod, copyFile, lstat, mkdir, open, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { basename, join, posix } from 'node:path';
import { gzipSync } from 'node:zlib';
import { pack as tarPack, type Header } from 'tar-stream';
import { sweepTemps, tempPathFor } from '../core/atomic.js';
import { sha256Sparse } from '../fs/sparse.js';
import { DomuError } from '../core/errors.js';
import { findNoSpace, noSpaceError } from '../core/stage-errors.js';
import { commandLine, run, type ExecEnv } from '../core/exec.js';
import { checkHeader } from '../store/genheader.js';
import { sha256, sha256File } from '../core/hash.js';
import { BUILD_RECORD, buildHashOf, readBuildRecord, type ArtifactRecord, type BuildRecord } from '../model/buildrecord.js';
import type { StageContext } from '../core/context.js';

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

const ZSTD_HINT = 'install zstd (apt-get install zstd)';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]*$/;

// ---------------------------------------------------------------------------------------------
// checkBuild

export interface CheckedFile {
  /** Relative to --out (as in build.json). */
  path: string;
  sha256: string;
  bytes: number;
}

export interface CheckedBuild {
  outDir: string;
  record: BuildRecord;
  /** The raw image's absolute path. */
  image: string;
  kernel: CheckedFile | null;
  ramdisk: CheckedFile | null;
  /** The generated configs as read and checked (their bytes go into the tarball as they are). */
  configs: { path: string; data: Buffer }[];
}

function rebuildHint(outDir: string): string {
  return `run \`domu build --out ${outDir}\` (same description) to rebuild it, then \`domu release\` again`;
}

function changedSinceBuild(outDir: string, rel: string, what: string): DomuError {
  return new DomuError(`${join(outDir, rel)} ${what}: the build in ${outDir} changed after \`domu build\` recorded it in ${BUILD_RECORD}; refusing to release it`, {
    hint: rebuildHint(outDir),
  });
}

/** A path from build.json, which must stay inside --out. */
function insideOut(outDir: string, rel: string): string {
  if (!rel || posix.isAbsolute(rel) || posix.normalize(rel) !== rel || rel.split('/').includes('..')) {
    throw new DomuError(`${join(outDir, BUILD_RECORD)} names ${JSON.stringify(rel)}, which is not a path inside ${outDir}`, { hint: rebuildHint(outDir) });
  }
  return join(outDir, rel);
}

async function checkArtifact(outDir: string, a: ArtifactRecord | null): Promise<CheckedFile | null> {
  if (!a) return null;
  const path = insideOut(outDir, a.path);
  const st = await stat(path).catch(() => undefined);
  if (!st?.isFile()) throw changedSinceBuild(outDir, a.path, 'is missing');
  const hash = await sha256File(path);
  if (st.size !== a.apparentBytes || hash !== a.sha256) throw changedSinceBuild(outDir, a.path, `has sha256 ${hash}, build.json records ${a.sha256}`);
  return { path: a.path, sha256: a.sha256, bytes: a.apparentBytes };
}

/** The build in `outDir` as build.json records it, after checking every artifact against it. */
export async function checkBuild(input: { outDir: string }, ctx: StageContext): Promise<CheckedBuild> {
  const { outDir } = input;
  const recordPath = join(outDir, BUILD_RECORD);
  const present = await stat(recordPath).then((s) => s.isFile(), () => false);
  if (!present) {
    throw new DomuError(`no build to release in ${outDir}: ${BUILD_RECORD} is missing (it is written when \`domu build\` succeeds)`, {
      hint: `run \`domu build --out ${outDir}\` first (or give --out the directory of an earlier build)`,
    });
  }
  const record = await readBuildRecord(outDir);
  if (!record) {
    throw new DomuError(`${recordPath} is not a build record this domu can read (unparsable or another record version)`, { hint: rebuildHint(outDir) });
  }
  const { buildHash, imageFile: _imageFile, ramdiskFile: _ramdiskFile, ...body } = record;
  if (buildHashOf(body) !== buildHash) {
    throw new DomuError(`${recordPath} was edited after the build (or written by a domu that hashed records differently): its content no longer matches its build hash ${buildHash.slice(0, 12)}`, { hint: rebuildHint(outDir) });
  }

  // The small files first: a changed config fails before the image is read.
  const configs: CheckedBuild['configs'] = [];
  for (const rel of record.configs) {
    const data = await readFile(insideOut(outDir, rel)).catch(() => undefined);
    if (!data) throw changedSinceBuild(outDir, rel, 'is missing');
    const h = checkHeader(data.toString('utf8'));
    if (!h.generated) throw changedSinceBuild(outDir, rel, 'is no longer a generated file (its domu header is gone)');
    if (!h.intact) throw changedSinceBuild(outDir, rel, 'was edited (its content no longer matches its domu-content-sha256 header)');
    configs.push({ path: rel, data });
  }
  const kernel = await checkArtifact(outDir, record.boot.kernel);
  const ramdisk = await checkArtifact(outDir, record.boot.ramdisk);

  const image = insideOut(outDir, record.image.path);
  const st = await stat(image).catch(() => undefined);
  if (!st?.isFile()) throw changedSinceBuild(outDir, record.image.path, 'is missing');
  if (st.size !== record.image.apparentBytes) throw changedSinceBuild(outDir, record.image.path, `is ${st.size} bytes, build.json records ${record.image.apparentBytes}`);
  ctx.progress(`hashing ${record.image.path}`);
  const hash = await sha256Sparse(ctx, image);
  if (hash !== record.image.sha256) throw changedSinceBuild(outDir, record.image.path, `has sha256 ${hash}, build.json records ${record.image.sha256}`);
  ctx.log.info(`build ${buildHash.slice(0, 12)} in ${outDir}: image, ${[kernel && 'kernel', ramdisk && 'ramdisk'].filter(Boolean).join(', ') || 'no boot files'} and ${configs.length} configs match ${BUILD_RECORD}`);
  return { outDir, record, image, kernel, ramdisk, configs };
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

function byteOrder(a: string, b: string): number {
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

// ---------------------------------------------------------------------------------------------
// writeRelease

export interface ReleaseInput {
  build: CheckedBuild;
  /** Where releases go; created when missing. */
  distDir: string;
  /** The releasing domu's version (the manifest's releasedWith). */
  domuVersion: string;
}

export interface ReleaseOutput {
  name: string;
  dir: string;
  /** 'already there': a release of this name existed with exactly these bytes; nothing was written. */
  status: 'created' | 'already there';
  buildHash: string;
  /** Every file of the release, SHA256SUMS included, by name. */
  files: ReleaseFile[];
  image: {
    name: string;
    bytes: number;
    rawSha256: string;
    apparentBytes: number;
    allocatedBytes: number;
    /** Allocated bytes of the image as the restore command wrote it (the check before the rename). */
    restoredAllocatedBytes: number;
    compression: string;
    restore: string;
  };
  manifest: string;
}

/** `<guest>-<busybox version>-<first 12 digits of the build hash>`. */
export function releaseName(r: BuildRecord): string {
  const name = `${r.description.guest.name}-${r.busybox.resolvedVersion}-${r.buildHash.slice(0, 12)}`;
  if (!NAME_RE.test(name)) throw new DomuError(`cannot name a release ${JSON.stringify(name)}: only letters, digits and ._+~- can be used`);
  return name;
}

/** The version a tool prints (first x.y.z in `--version`). */
async function toolVersion(env: ExecEnv, tool: string, hint: string): Promise<string> {
  const r = await run(env, tool, ['--version'], { missingHint: hint });
  return /\bv?(\d+\.\d+(?:\.\d+)?)\b/.exec(`${r.stdout}\n${r.stderr}`)?.[1] ?? 'unknown';
}

async function compressImage(src: string, dest: string, ctx: StageContext): Promise<void> {
  await run(ctx, IMAGE_COMPRESSION.tool, [...IMAGE_COMPRESSION.args, '-q', src, '-o', dest], { missingHint: ZSTD_HINT });
}

/**
 * Run the manifest's restore command in `dir` and compare what comes out with the recorded raw
 * image: the release's image is known to restore byte-identical before it is released.
 */
async function checkRestore(dir: string, compressed: string, build: CheckedBuild, ctx: StageContext): Promise<number> {
  const r = build.record;
  const raw = basename(r.image.path);
  const [tool, ...args] = restoreArgv(compressed, raw);
  const restored = join(dir, raw);
  try {
    await run(ctx, tool!, args, { cwd: dir, missingHint: ZSTD_HINT });
    const st = await stat(restored);
    const hash = await sha256Sparse(ctx, restored);
    if (st.size !== r.image.apparentBytes || hash !== r.image.sha256) {
      throw new DomuError(`the compressed image does not restore to the recorded image (sha256 ${hash}, ${st.size} bytes; build.json: ${r.image.sha256}, ${r.image.apparentBytes} bytes): ${r.image.path} changed while it was being released`, {
        hint: rebuildHint(build.outDir),
      });
    }
    return st.blocks * 512;
  } finally {
    await rm(restored, { force: true });
  }
}

/** Copy a checked boot file into the release and prove the copy is the recorded file. */
async function copyChecked(outDir: string, f: CheckedFile, dir: string): Promise<ReleaseFile> {
  const name = basename(f.path);
  const dest = join(dir, name);
  await copyFile(join(outDir, f.path), dest);
  const hash = await sha256File(dest);
  if (hash !== f.sha256) throw changedSinceBuild(outDir, f.path, `changed while it was being released (sha256 ${hash}, build.json records ${f.sha256})`);
  return { name, sha256: hash, bytes: f.bytes };
}

async function writeFileHashed(dir: string, name: string, data: Buffer): Promise<ReleaseFile> {
  await writeFile(join(dir, name), data);
  return { name, sha256: sha256(data), bytes: data.length };
}

/** The first difference between two release directories, or undefined when they hold the same bytes. */
export async function releaseDifference(a: string, b: string): Promise<string | undefined> {
  const [na, nb] = await Promise.all([readdir(a), readdir(b)]);
  na.sort();
  nb.sort();
  if (na.join('\0') !== nb.join('\0')) return `files ${JSON.stringify(nb)} instead of ${JSON.stringify(na)}`;
  for (const n of na) {
    const [sa, sb] = await Promise.all([lstat(join(a, n)), lstat(join(b, n))]);
    if (!sa.isFile() || !sb.isFile()) return `${n} is not a regular file`;
    if (sa.size !== sb.size || !(await sameBytes(join(a, n), join(b, n), sa.size))) return `${n} differs`;
  }
  return undefined;
}

async function sameBytes(a: string, b: string, size: number): Promise<boolean> {
  const [fa, fb] = await Promise.all([open(a, 'r'), open(b, 'r')]);
  try {
    const ba = Buffer.alloc(1 << 20);
    const bb = Buffer.alloc(1 << 20);
    for (let pos = 0; pos < size; ) {
      const n = Math.min(ba.length, size - pos);
      const [ra, rb] = await Promise.all([fa.read(ba, 0, n, pos), fb.read(bb, 0, n, pos)]);
      if (ra.bytesRead !== n || rb.bytesRead !== n || !ba.subarray(0, n).equals(bb.subarray(0, n))) return false;
      pos += n;
    }
    return true;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}

/** Write the release of a checked build into `distDir` (see the file comment). */
export async function writeRelease(input: ReleaseInput, ctx: StageContext): Promise<ReleaseOutput> {
  const { build, distDir } = input;
  const r = build.record;
  const name = releaseName(r);
  const final = join(distDir, name);
  await mkdir(distDir, { recursive: true });
  await sweepTemps(distDir); // what a killed release left (older than a day)
  const tmp = tempPathFor(final);
  const dropCleanup = ctx.cleanup.tempPath(tmp);
  try {
    await mkdir(tmp);
    const files: ReleaseFile[] = [];

    const compressed = `${basename(r.image.path)}${IMAGE_COMPRESSION.suffix}`;
    ctx.progress(`compressing ${r.image.path} (${IMAGE_COMPRESSION.tool} ${IMAGE_COMPRESSION.args.join(' ')})`);
    await compressImage(build.image, join(tmp, compressed), ctx);
    ctx.progress(`restoring ${compressed} to check it`);
    const restoredAllocatedBytes = await checkRestore(tmp, compressed, build, ctx);
    const image: ReleaseFile = { name: compressed, sha256: await sha256File(join(tmp, compressed)), bytes: (await stat(join(tmp, compressed))).size };
    files.push(image);

    const kernel = build.kernel && (await copyChecked(build.outDir, build.kernel, tmp));
    const ramdisk = build.ramdisk && (await copyChecked(build.outDir, build.ramdisk, tmp));
    for (const f of [kernel, ramdisk]) if (f) files.push(f);

    let configs: ManifestInput['configs'] = null;
    if (build.configs.length) {
      const tarball = await writeFileHashed(tmp, CONFIGS_TARBALL, await configsTarball(build.configs, r.sourceDateEpoch));
      const listed = build.configs.map((c) => ({ path: c.path, sha256: sha256(c.data) })).sort((a, b) => byteOrder(a.path, b.path));
      configs = { ...tarball, files: listed };
      files.push(tarball);
    }

    const releasedWith = { domu: input.domuVersion, zstd: await toolVersion(ctx, 'zstd', ZSTD_HINT), zlib: process.versions.zlib ?? 'unknown' };
    const manifest = releaseManifest({ name, record: r, image, kernel, ramdisk, configs, releasedWith });
    files.push(await writeFileHashed(tmp, MANIFEST, Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`)));

    files.sort((a, b) => byteOrder(a.name, b.name));
    const sums = files.map((f) => `${f.sha256}  ${f.name}\n`).join('');
    files.push(await writeFileHashed(tmp, SUMS, Buffer.from(sums)));
    files.sort((a, b) => byteOrder(a.name, b.name));

    // Modes and times are part of "the same release" too (rsync, tar of dist/).
    for (const f of files) {
      await chmod(join(tmp, f.name), 0o644);
      await utimes(join(tmp, f.name), r.sourceDateEpoch, r.sourceDateEpoch);
    }
    await chmod(tmp, 0o755);
    await utimes(tmp, r.sourceDateEpoch, r.sourceDateEpoch);

    let status: ReleaseOutput['status'] = 'created';
    try {
      await rename(tmp, final);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST' && code !== 'ENOTDIR') throw e;
      const st = await lstat(final);
      const diff = st.isDirectory() ? await releaseDifference(tmp, final) : 'it is not a directory';
      if (diff !== undefined) {
        throw new DomuError(`${final} already exists and is not this release (${diff}): a release name is never reused for other content`, {
          hint: `compare it with build ${r.buildHash.slice(0, 12)} in ${build.outDir}; remove ${final} only if it is not a release anyone uses`,
        });
      }
      status = 'already there';
    }
    ctx.log.info(`${status === 'created' ? 'released' : 'already released'}: ${final} (${files.length} files)`);
    return {
      name,
      dir: final,
      status,
      buildHash: r.buildHash,
      files,
      image: {
        name: compressed,
        bytes: image.bytes,
        rawSha256: r.image.sha256,
        apparentBytes: r.image.apparentBytes,
        allocatedBytes: r.image.allocatedBytes,
        restoredAllocatedBytes,
        compression: `${IMAGE_COMPRESSION.tool} ${IMAGE_COMPRESSION.args.join(' ')}`,
        restore: restoreCommand(compressed, basename(r.image.path)),
      },
      manifest: join(final, MANIFEST),
    };
  } catch (e) {
    // A full --dist: one line naming it (the temporary directory goes in `finally`).
    const full = findNoSpace(e);
    if (full) throw noSpaceError({ code: full.code, dir: distDir, role: 'dist', doing: `writing the release ${name}`, note: 'nothing was left behind', cause: e });
    throw e;
  } finally {
    await rm(tmp, { recursive: true, force: true });
    dropCleanup();
  }
}
