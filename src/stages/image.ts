// The image stage: the staging tree (+ device nodes) → a sparse raw ext4 image at `output`.
//
// The image is built under a temporary name beside `output` (same file system, so the final
// rename is atomic) and renamed onto `output` only when it is complete and `e2fsck -fn` is clean;
// a previous file at `output` stays intact on any failure. Everything the stage creates (temp
// file, loop device, mount, mount point) is registered with ctx.cleanup before it exists where
// possible, and undone by the stage itself when it fails or is aborted.
//
// Two ways to populate it:
// - rootless (default when mke2fs has `-d`): `mke2fs -d <staging>`, then ONE `debugfs -w` pass
//   that creates the device nodes and sets every inode to root:root and the epoch. Reproducible:
//   UUID and directory hash seed derived from contentHash (+ size + label), E2FSPROGS_FAKE_TIME
//   for mke2fs's own timestamps, and every inode's atime/mtime/ctime/crtime set by debugfs —
//   so the staging tree's times (and its owner) do not matter, and the staging tree is never
//   modified (it may belong to someone else). Works for any user.
// - mount (classic; `auto` picks it when mke2fs lacks -d): loop device + mount + `cp -a` +
//   `chown` + `mknod`. Needs root. NOT byte-reproducible: the kernel writes mount/write times,
//   mount counts, the last-mounted path and journal contents, and inode ctimes are the build's
//   time; so it reports `reproducible: false`.
// The steps: check the input; scan the tree and check that it fits and that the output has room
// (image-fit.ts); create the sparse temp file; populate it (rootless here, or image-mount.ts);
// e2fsck and hash; stage the companions; rename.
import { open, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import {
  debugfsSafe,
  detectMke2fs,
  deterministicUuid,
  dumpe2fsHeader,
  e2fsckCheck,
  fixupScript,
  imagePath,
  inodesUsed,
  runDebugfs,
} from '../fs/e2fs.js';
import { sha256Sparse } from '../fs/sparse.js';
import { abortError, AbortedError, DomuError, InputError } from '../core/errors.js';
import { run } from '../core/exec.js';
import { formatSize } from '../core/size.js';
import { tempPathFor } from '../core/atomic.js';
import type { DeviceSpec } from '../fs/devtable.js';
import { faultPoint } from '../core/fault.js';
import { findTooBig, fsState, noSpaceError, tooBigError } from '../core/stage-errors.js';
import type { StageContext } from '../core/context.js';
import { checkFreeSpace, checkSize, elsewhere, isImageFull, missingParents, MiB, noSpaceIn, scanTree, tooSmall } from './image-fit.js';
import { populateByMount, Resources } from './image-mount.js';

/** A device node to create in the image. */
export type DeviceNode = DeviceSpec;

export type PopulateMode = 'auto' | 'rootless' | 'mount';

export interface ImageInput {
  /** The root tree, owned by whoever built it; read only. */
  staging: string;
  devices: DeviceNode[];
  /** Final image path. */
  output: string;
  /** Bytes. */
  size: number;
  /** Guest name: the file system label (ext4 keeps 16 bytes). */
  label: string;
  populate: PopulateMode;
  sourceDateEpoch: number;
  /** Hex identifying the tree's content: seeds the UUID and directory hash seed. */
  contentHash: string;
  /**
   * Files that must appear beside the image together with it (the kernel and ramdisk in --out):
   * counted in the free-space check, copied to temporary names once the image is complete and
   * checked, and renamed into place right after it. A failure before that leaves the previous
   * image and files untouched.
   */
  companions?: ImageCompanions;
}

export interface ImageCompanions {
  /** Bytes they take in the output's file system (those already in place count 0). */
  bytes: number;
  /** Copy them to temporary names beside their targets; on failure, removes what it copied. */
  stage(): Promise<StagedFiles>;
}

export interface StagedFiles {
  /** Rename the temporary files into place. */
  commit(): Promise<void>;
  /** Remove the temporary files (failure, abort). */
  discard(): Promise<void>;
}

export interface ImageOutput {
  path: string;
  sha256: string;
  /** stat size: exactly input.size. */
  apparentBytes: number;
  /** stat blocks × 512: what the sparse image takes on disk. */
  allocatedBytes: number;
  inodesUsed: number;
  /** Entries of the staging tree (the root itself not counted) + device nodes. */
  files: number;
  populate: 'rootless' | 'mount';
  reproducible: boolean;
  uuid: string;
}

const LABEL_MAX = 16;

export async function imageStage(input: ImageInput, ctx: StageContext): Promise<ImageOutput> {
  const output = resolve(input.output);
  const staging = resolve(input.staging);
  checkInput(input);
  const label = truncateLabel(input.label, ctx);
  const devices = input.devices.map((d) => ({ ...d, path: imagePath(d.path) }));

  // Everything below runs before a single byte is written.
  const mke2fs = await detectMke2fs(ctx);
  const mode = choosePopulate(input.populate, mke2fs.populateFromDir, mke2fs.version);
  if (mode === 'mount' && process.getuid?.() !== 0) {
    throw new DomuError('loop-mount population needs root; use populate: rootless');
  }
  const tree = await scanTree(staging, mode === 'rootless');
  const mkdirs = missingParents(devices, tree);
  for (const d of devices) {
    if (tree.paths.has(d.path)) throw new InputError(`device node ${d.path} is also in the staging tree (${join(staging, d.path)}); remove one of them`);
    if (mode === 'rootless' && !debugfsSafe(d.path)) throw new DomuError(`device node path ${JSON.stringify(d.path)} contains a newline or a double quote`);
  }
  const uuid = deterministicUuid(input.contentHash, input.size, label);
  const common = ['-t', 'ext4', '-I', '256'];
  const need = await checkSize(ctx, input.size, tree, devices.length, mkdirs.length, common);
  const outDir = dirname(output);
  const extra = input.companions?.bytes ?? 0;
  const needBytes = await checkFreeSpace(outDir, output, need, extra);

  const res = new Resources(ctx);
  const tmp = tempPathFor(output);
  try {
    // The temp file: registered first, then created sparse (nothing written).
    res.add(`remove ${tmp}`, () => rm(tmp, { force: true }), { kind: 'path', path: tmp });
    const fh = await open(tmp, 'wx', 0o644);
    try {
      await fh.truncate(input.size);
    } finally {
      await fh.close();
    }
    await faultPoint('image:created', ctx.signal);
    ctx.log.info(`image ${formatSize(input.size)} (sparse), uuid ${uuid}, ${tree.entries} entries + ${devices.length} device nodes, populated ${mode}`);

    if (mode === 'rootless') {
      const fakeTime = { E2FSPROGS_FAKE_TIME: String(input.sourceDateEpoch) };
      ctx.log.info(`populating ${tmp} (rootless)`);
      await run(ctx, 'mke2fs', [...common, '-F', '-L', label, '-U', uuid, '-E', `hash_seed=${uuid},root_owner=0:0`, '-d', staging, tmp], { env: fakeTime });
      const script = fixupScript({
        mkdirs,
        devices,
        paths: ['/', '/lost+found', ...[...tree.paths].filter((p) => p !== '/lost+found')],
        epoch: input.sourceDateEpoch,
      });
      ctx.log.debug(`debugfs pass: ${script.split('\n').length - 1} commands`);
      await runDebugfs(ctx, tmp, script, { write: true, env: fakeTime });
    } else {
      await run(ctx, 'mke2fs', [...common, '-F', '-L', label, '-U', uuid, tmp]);
      await populateByMount(ctx, res, tmp, staging, devices);
    }

    if (ctx.signal.aborted) throw abortError(ctx.signal);
    await faultPoint('image:populated', ctx.signal);
    ctx.log.info(`checking ${tmp} (e2fsck -fn)`);
    const [, header, sha256, st] = await Promise.all([e2fsckCheck(ctx, tmp), dumpe2fsHeader(ctx, tmp), sha256Sparse(ctx, tmp), stat(tmp)]);
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    let staged: StagedFiles | undefined;
    if (input.companions) {
      ctx.log.debug('copying the files that go beside the image to temporary names');
      staged = await input.companions.stage();
      const s = staged;
      res.add('remove the temporary copies of the files beside the image', () => s.discard());
    }
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    await rename(tmp, output);
    await staged?.commit();
    res.releaseAll();
    const out: ImageOutput = {
      path: output,
      sha256,
      apparentBytes: st.size,
      allocatedBytes: st.blocks * 512,
      inodesUsed: inodesUsed(header),
      files: tree.entries + devices.length,
      populate: mode,
      reproducible: mode === 'rootless',
      uuid,
    };
    ctx.log.info(`image ${output}: ${formatSize(out.apparentBytes)} apparent, ${(out.allocatedBytes / MiB).toFixed(1)} MiB allocated, ${out.inodesUsed} inodes, sha256 ${sha256}`);
    return out;
  } catch (e) {
    const full = noSpaceIn(e, outDir);
    const fs = full ? fsState(outDir) : undefined; // as it was full, before the temp files go
    await res.undoAll();
    if (ctx.signal.aborted) throw abortError(ctx.signal);
    if (e instanceof AbortedError) throw e;
    const note = async () => ((await stat(output).then(() => true, () => false)) ? 'the previous image is untouched' : 'nothing was left behind');
    if (full) {
      throw noSpaceError({ code: full, dir: outDir, role: 'out', doing: `building the image ${basename(output)}`, need: needBytes, fs, note: await note(), cause: e });
    }
    // EFBIG: the plan's probe of --out (core/filesize.ts) lets no such size through; a limit that
    // changed since (another mount, ulimit -f of a program) still gets one line.
    if (findTooBig(e) && !elsewhere(findTooBig(e)?.path, outDir)) {
      throw tooBigError({ dir: outDir, role: 'out', doing: `building the image ${basename(output)}`, size: input.size, note: await note(), cause: e });
    }
    if (isImageFull(e)) throw await tooSmall(ctx, input.size, tree, devices.length, mkdirs.length, common);
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Input

function checkInput(input: ImageInput): void {
  if (!Number.isSafeInteger(input.size) || input.size <= 0) throw new InputError(`image.size ${input.size} is not a positive whole number of bytes`);
  if (!Number.isSafeInteger(input.sourceDateEpoch) || input.sourceDateEpoch < 0 || input.sourceDateEpoch >= 2 ** 34) {
    throw new InputError(`SOURCE_DATE_EPOCH ${input.sourceDateEpoch} is not whole seconds since 1970 that ext4 can store`);
  }
  if (!/^[0-9a-f]+$/i.test(input.contentHash)) throw new DomuError(`image: contentHash ${JSON.stringify(input.contentHash)} is not hex`);
  if (!input.label || /[\n\0]/.test(input.label)) throw new InputError(`image label ${JSON.stringify(input.label)} is empty or has control characters`);
  for (const d of input.devices) {
    const p = imagePath(d.path);
    const ok =
      d.path.startsWith('/') &&
      p !== '/' &&
      (d.type === 'c' || d.type === 'b') &&
      Number.isInteger(d.mode) && d.mode >= 0 && d.mode <= 0o7777 &&
      [d.uid, d.gid, d.major, d.minor].every((n) => Number.isInteger(n) && n >= 0);
    if (!ok) throw new InputError(`device node ${JSON.stringify(d)} is not valid (absolute path, type c|b, mode ≤ 07777, whole numbers)`);
  }
}

/** ext4 labels hold 16 bytes; mke2fs would truncate with a warning on its own. */
function truncateLabel(label: string, ctx: StageContext): string {
  const b = Buffer.from(label);
  if (b.length <= LABEL_MAX) return label;
  let n = LABEL_MAX;
  while (n > 0 && (b[n]! & 0xc0) === 0x80) n--; // whole UTF-8 characters only
  const short = b.subarray(0, n).toString();
  ctx.log.warn(`file system label ${JSON.stringify(label)} is longer than ${LABEL_MAX} bytes; using ${JSON.stringify(short)}`);
  return short;
}

function choosePopulate(want: PopulateMode, hasD: boolean, version: string | undefined): 'rootless' | 'mount' {
  if (want === 'mount') return 'mount';
  if (hasD) return 'rootless';
  if (want === 'rootless') throw new DomuError(`mke2fs ${version ?? '(unknown version)'} cannot populate from a directory (-d needs e2fsprogs ≥ 1.43); use populate: mount (as root) or install a newer e2fsprogs`);
  return 'mount';
}
