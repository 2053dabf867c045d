// `domu release` (design.md, CLI): versioned, reproducible release artifacts of the build in --out.
//
// checkBuild (release-check.ts): out/build.json is read and its build hash recomputed (an edited
//   record is refused); every artifact it names is compared with it. A build in --out that changed
//   after `domu build` recorded it is never released.
// writeRelease: dist/<guest>-<busybox version>-<build hash, 12 digits>/ is written in a temporary
//   directory beside it and renamed into place, so a failure leaves nothing half-written:
//     <image>.zst       the raw image compressed (IMAGE_COMPRESSION, release-format.ts)
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
import { chmod, copyFile, lstat, mkdir, open, readdir, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { sweepTemps, tempPathFor } from '../core/atomic.js';
import { sha256Sparse } from '../fs/sparse.js';
import { DomuError } from '../core/errors.js';
import { findNoSpace, findTooBig, noSpaceError, tooBigError } from '../core/stage-errors.js';
import { run, type ExecEnv } from '../core/exec.js';
import { sha256, sha256File } from '../core/hash.js';
import type { BuildRecord } from '../model/buildrecord.js';
import type { StageContext } from '../core/context.js';
import { changedSinceBuild, rebuildHint, type CheckedBuild, type CheckedFile } from './release-check.js';
import { CONFIGS_TARBALL, configsTarball, IMAGE_COMPRESSION, MANIFEST, releaseManifest, restoreArgv, restoreCommand, SUMS, byteOrder, type ManifestInput, type ReleaseFile } from './release-format.js';

const ZSTD_HINT = 'install zstd (apt-get install zstd)';
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._+~-]*$/;

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
    if (findTooBig(e)) throw tooBigError({ dir: distDir, role: 'dist', doing: `writing the release ${name}`, note: 'nothing was left behind', cause: e });
    throw e;
  } finally {
    await rm(tmp, { recursive: true, force: true });
    dropCleanup();
  }
}
