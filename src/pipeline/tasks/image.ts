// Pipeline tasks of the guest disk: rootfs and image, and placing kernel and ramdisk in --out/boot.
import { count } from '../../core/plural.js';
import { constants, existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { tempPathFor } from '../../core/atomic.js';
import { InputError } from '../../core/errors.js';
import { checkImageFits } from '../../core/filesize.js';
import { sha256File } from '../../core/hash.js';
import { readBuildRecord } from '../../model/buildrecord.js';
import { currentImage, hashOf, imageKey, type HashFn } from '../uptodate.js';
import { imageStage, type StagedFiles } from '../../stages/image.js';
import { rootfsStage } from '../../stages/rootfs.js';
import { treeNewestMtime } from '../../stages/extract.js';
import { parseDeviceTable } from '../../fs/devtable.js';
import type { BootFiles } from '../../stages/xenconfigs.js';
import type { PipelineStage, PreflightCheck } from '../run.js';
import type { StageContext } from '../../core/context.js';
import { DEFAULTS, type Description } from '../../model/schema.js';
import { guestNetwork, networkApplets, networkFileText } from '../../model/network.js';
import type { PlanFlags, PlanState } from '../plan-types.js';
import { resolveDataPath } from './busybox.js';

export function rootfsTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const skel = resolveDataPath(desc.image.skel, flags.baseDir, DEFAULTS.image.skel);
  if (!existsSync(skel)) throw new InputError(`image.skel: no such directory ${skel}`, 'fix the path in the build description (relative paths start at its directory)');
  // The device table lives beside the skel: <skel>/../rootfs-devices.txt for the default layout.
  const deviceTable = resolve(skel, '..', 'rootfs-devices.txt');
  let tableText: string;
  try {
    tableText = readFileSync(deviceTable, 'utf8');
  } catch {
    throw new InputError(`the device table ${deviceTable} (beside image.skel) cannot be read`, 'copy rootfs-devices.txt from domu-builder next to your skel directory');
  }
  parseDeviceTable(tableText, deviceTable); // plan-time: a bad line is exit 2 before any stage
  return {
    name: 'rootfs',
    title: 'Assemble the root file system',
    run: async (ctx) => {
      const m = state.modules;
      const net = guestNetwork(desc);
      const network = { text: networkFileText(net), applets: networkApplets(net) };
      const out = resolve(flags.outDir ?? 'out');
      const sourceDateEpoch = await epochOf(flags, state);
      state.imageKey = await imageKey({
        compileKey: state.compile!.key,
        skel,
        deviceTable,
        guest: desc.guest,
        modules: m ? { files: m.files, etcModules: m.etcModules } : undefined,
        network: network.text,
        size: desc.image.size,
        populate: desc.image.populate,
        sourceDateEpoch,
        hash: hashOf(ctx.cache, flags.noCache),
      });
      state.previous ??= await readBuildRecord(out);
      if (!flags.noCache && (await currentImage(state.previous, out, state.imageKey))) {
        state.imageUpToDate = true;
        ctx.log.info(`rootfs: ${join(out, desc.image.file)} is up to date (built from the same inputs, not changed since): nothing to assemble`);
        return { cacheHit: true, note: 'up to date', outputs: { imageKey: state.imageKey } };
      }
      const r = await rootfsStage(
        { installTree: state.compile!.installTree, skel, deviceTable, guest: desc.guest, network, ...(m ? { modules: { files: m.files, etcModules: m.etcModules } } : {}) },
        ctx,
      );
      state.rootfs = r;
      return { cacheHit: false, note: `${count(r.files, 'file')}, ${count(r.symlinks, 'link')}, ${count(r.devices.length, 'device node')}`, outputs: { ...r, imageKey: state.imageKey } };
    },
  };
}

export function imageTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const output = resolve(flags.outDir ?? 'out', desc.image.file);
  return {
    name: 'image',
    title: `Build the ext4 image ${desc.image.file}`,
    run: async (ctx) => {
      const sourceDateEpoch = await epochOf(flags, state);
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      if (state.imageUpToDate) {
        const rec = state.previous!.image;
        state.image = { ...rec, path: output };
        if (desc.kernel.ship) state.boot = await placeBoot(desc, flags, state, ctx);
        ctx.log.info(`image: ${output} is up to date (sha256 ${rec.sha256.slice(0, 16)}…): not rewritten`);
        return { cacheHit: true, note: `up to date, not rewritten (${mib(rec.allocatedBytes)} allocated)`, outputs: { ...state.image, sourceDateEpoch, upToDate: true, boot: state.boot ?? null } };
      }
      const r = state.rootfs!;
      await mkdir(dirname(output), { recursive: true });
      // The kernel and ramdisk go into --out together with the image: counted in its free-space
      // check, copied beside it before it is renamed into place, renamed right after it.
      const boot = desc.kernel.ship ? bootFiles(desc, flags, state) : undefined;
      const files = await prepareFiles(boot?.files ?? [], hashOf(ctx.cache, flags.noCache));
      const img = await imageStage(
        {
          staging: r.staging,
          devices: r.devices,
          output,
          size: desc.image.size,
          label: desc.guest.name,
          populate: desc.image.populate,
          sourceDateEpoch,
          contentHash: r.contentHash,
          companions: { bytes: files.bytes, stage: () => stageFiles(ctx, files) },
        },
        ctx,
      );
      state.image = img;
      if (boot) state.boot = boot.boot;
      await rm(r.staging, { recursive: true, force: true }); // its content is in the image now
      return { cacheHit: false, note: `${mib(img.apparentBytes)} apparent, ${mib(img.allocatedBytes)} allocated (${img.populate})`, outputs: { ...img, sourceDateEpoch, boot: state.boot ?? null } };
    },
  };
}

/**
 * Before any stage: --out's file system must hold a file of image.size (ext4 holds none of 16 TiB).
 * Probed on --out itself (a sparse temporary file, registered with the cleanup); exit 2 if not.
 */
export function imageFitsCheck(desc: Description, flags: PlanFlags): PreflightCheck {
  const out = resolve(flags.outDir ?? 'out');
  return async ({ cleanup, log }) => checkImageFits({ dir: out, size: desc.image.size, where: 'out', register: (p) => cleanup.tempPath(p), log });
}

/** A file to put into --out. */
export interface Placement {
  src: string;
  dest: string;
  /** The source may be moved (it is scratch): renamed when on the same file system. */
  move: boolean;
}

export interface PreparedFiles {
  files: (Placement & { same: boolean })[];
  /** What the files that differ take on disk (their sources' allocated bytes). */
  bytes: number;
}

/** Which files differ from what is at their destination, and the space they need. */
export async function prepareFiles(list: readonly Placement[], hash: HashFn = sha256File): Promise<PreparedFiles> {
  const files: PreparedFiles['files'] = [];
  let bytes = 0;
  for (const p of list) {
    if (resolve(p.src) === resolve(p.dest)) continue;
    const [a, b] = await Promise.all([stat(p.src), stat(p.dest).catch(() => undefined)]);
    const same = b !== undefined && a.size === b.size && (await hash(p.src)) === (await hash(p.dest));
    if (!same) bytes += a.blocks * 512;
    files.push({ ...p, same });
  }
  return { files, bytes };
}

/**
 * Copy (or move) every file that differs to a temporary name beside its destination, each
 * registered with the cleanup registry before it exists. Nothing is at a final path yet: a
 * failure (a full --out) removes what was copied and leaves every destination as it was.
 * `commit` renames them all into place (renames need no space); `discard` removes them.
 */
export async function stageFiles(ctx: StageContext, prepared: PreparedFiles): Promise<StagedFiles> {
  const temps: { tmp: string; dest: string; release: () => void }[] = [];
  const discard = async () => {
    for (const t of temps.splice(0)) {
      await rm(t.tmp, { force: true });
      t.release();
    }
  };
  try {
    for (const f of prepared.files) {
      if (f.same) continue;
      await mkdir(dirname(f.dest), { recursive: true });
      const tmp = tempPathFor(f.dest);
      temps.push({ tmp, dest: f.dest, release: ctx.cleanup.tempPath(tmp) }); // no .tmp- file left in --out
      if (f.move) await rename(f.src, tmp).catch(() => copyFile(f.src, tmp, constants.COPYFILE_EXCL));
      else await copyFile(f.src, tmp, constants.COPYFILE_EXCL);
    }
  } catch (e) {
    await discard();
    throw e;
  }
  return {
    commit: async () => {
      for (const t of [...temps]) {
        await rename(t.tmp, t.dest);
        temps.splice(temps.indexOf(t), 1);
        t.release();
      }
      for (const f of prepared.files) if (f.move) await rm(f.src, { force: true });
    },
    discard,
  };
}

/** SOURCE_DATE_EPOCH of the build: the flag or environment, else the busybox tarball's newest mtime. */
export async function epochOf(flags: PlanFlags, state: PlanState): Promise<number> {
  state.sourceDateEpoch ??= flags.sourceDateEpoch ?? (await treeNewestMtime(state.extract!.tree));
  return state.sourceDateEpoch;
}

/** The guest kernel and ramdisk for `<out>/boot/` (none without a kernel stage). */
function bootFiles(desc: Description, flags: PlanFlags, state: PlanState): { boot: PlanState['boot']; files: Placement[] } | undefined {
  const k = state.kernel;
  if (!k) return undefined;
  const boot = resolve(flags.outDir ?? 'out', 'boot');
  const names = bootNames(desc, k.release);
  const kernel = join(boot, names.kernel!);
  const files: Placement[] = [{ src: k.image!, dest: kernel, move: false }]; // the build's kernel stage always has an image
  let ramdisk: string | undefined;
  if (state.initramfs) {
    ramdisk = join(boot, names.ramdisk!);
    files.push({ src: state.initramfs.path, dest: ramdisk, move: true });
  } else if (names.ramdisk) {
    ramdisk = join(boot, names.ramdisk);
    files.push({ src: resolve(flags.baseDir ?? process.cwd(), desc.kernel.ramdisk), dest: ramdisk, move: false });
  }
  return { boot: { kernel, ramdisk }, files };
}

/**
 * The guest kernel and ramdisk into `<out>/boot/`, both or neither: copied to temporary names
 * first, then renamed. In a build that makes a new image they go with it (imageStage's
 * companions), so that a failed build never leaves a new kernel beside an old image.
 */
export async function placeBoot(desc: Description, flags: PlanFlags, state: PlanState, ctx: StageContext): Promise<PlanState['boot']> {
  const b = bootFiles(desc, flags, state);
  if (!b) return undefined;
  const staged = await stageFiles(ctx, await prepareFiles(b.files, hashOf(ctx.cache, flags.noCache)));
  try {
    await staged.commit();
  } catch (e) {
    await staged.discard();
    throw e;
  }
  return b.boot;
}

/** The names of kernel and ramdisk in the store's boot/ (the same in --out and in every config). */
export function bootNames(desc: Description, release: string): BootFiles {
  const r = desc.kernel.ramdisk;
  return {
    kernel: `vmlinuz-${release}`,
    ramdisk: r === 'none' ? undefined : `initrd-${release}-${desc.guest.name}.${r === 'generate' ? 'gz' : 'img'}`,
  };
}
