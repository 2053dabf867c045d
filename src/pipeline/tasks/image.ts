// Pipeline tasks of the guest disk: rootfs and image, and placing kernel and ramdisk in --out/boot.
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, rename, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { tempPathFor } from '../../lib/atomic.js';
import { InputError } from '../../lib/errors.js';
import { sha256File } from '../../lib/hash.js';
import { readBuildRecord } from '../buildrecord.js';
import { currentImage, imageKey } from '../uptodate.js';
import { imageStage } from '../../stages/image.js';
import { rootfsStage } from '../../stages/rootfs.js';
import { treeNewestMtime } from '../../stages/extract.js';
import { parseDeviceTable } from '../../lib/devtable.js';
import type { BootFiles } from '../../stages/xenconfigs.js';
import type { PipelineStage } from '../run.js';
import type { StageContext } from '../context.js';
import { DEFAULTS, type Description } from '../schema.js';
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
      const out = resolve(flags.outDir ?? 'out');
      const sourceDateEpoch = await epochOf(flags, state);
      state.imageKey = await imageKey({
        compileKey: state.compile!.key,
        skel,
        deviceTable,
        guest: desc.guest,
        modules: m ? { files: m.files, etcModules: m.etcModules } : undefined,
        size: desc.image.size,
        populate: desc.image.populate,
        sourceDateEpoch,
      });
      state.previous ??= await readBuildRecord(out);
      if (!flags.noCache && (await currentImage(state.previous, out, state.imageKey))) {
        state.imageUpToDate = true;
        ctx.log.info(`rootfs: ${join(out, desc.image.file)} is up to date (built from the same inputs, not changed since): nothing to assemble`);
        return { cacheHit: true, note: 'up to date', outputs: { imageKey: state.imageKey } };
      }
      const r = await rootfsStage(
        { installTree: state.compile!.installTree, skel, deviceTable, guest: desc.guest, ...(m ? { modules: { files: m.files, etcModules: m.etcModules } } : {}) },
        ctx,
      );
      state.rootfs = r;
      return { cacheHit: false, note: `${r.files} files, ${r.symlinks} links, ${r.devices.length} device nodes`, outputs: { ...r, imageKey: state.imageKey } };
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
      const img = await imageStage(
        { staging: r.staging, devices: r.devices, output, size: desc.image.size, label: desc.guest.name, populate: desc.image.populate, sourceDateEpoch, contentHash: r.contentHash },
        ctx,
      );
      state.image = img;
      await rm(r.staging, { recursive: true, force: true }); // its content is in the image now
      if (desc.kernel.ship) state.boot = await placeBoot(desc, flags, state, ctx);
      return { cacheHit: false, note: `${mib(img.apparentBytes)} apparent, ${mib(img.allocatedBytes)} allocated (${img.populate})`, outputs: { ...img, sourceDateEpoch, boot: state.boot ?? null } };
    },
  };
}

/**
 * Put `src` at `dest` atomically (copy or move to a temp name beside it, then rename). A `dest`
 * that already has the same content is left alone (same inode and mtime: up to date).
 */
export async function placeFile(ctx: StageContext, src: string, dest: string, move: boolean): Promise<void> {
  if (resolve(src) === resolve(dest)) return;
  const [a, b] = await Promise.all([stat(src), stat(dest).catch(() => undefined)]);
  if (b && a.size === b.size && (await sha256File(src)) === (await sha256File(dest))) {
    if (move) await rm(src, { force: true });
    return;
  }
  await mkdir(dirname(dest), { recursive: true });
  const tmp = tempPathFor(dest);
  const release = ctx.cleanup.tempPath(tmp); // an interrupted copy leaves no .tmp- file in --out
  try {
    if (move) await rename(src, tmp).catch(() => copyFile(src, tmp));
    else await copyFile(src, tmp);
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  } finally {
    release();
  }
}

/** SOURCE_DATE_EPOCH of the build: the flag or environment, else the busybox tarball's newest mtime. */
export async function epochOf(flags: PlanFlags, state: PlanState): Promise<number> {
  state.sourceDateEpoch ??= flags.sourceDateEpoch ?? (await treeNewestMtime(state.extract!.tree));
  return state.sourceDateEpoch;
}

/**
 * The guest kernel and ramdisk into `<out>/boot/`, after the image succeeded, so that a failed
 * build never leaves a new kernel beside an old image.
 */
export async function placeBoot(desc: Description, flags: PlanFlags, state: PlanState, ctx: StageContext): Promise<PlanState['boot']> {
  const k = state.kernel;
  if (!k) return undefined;
  const boot = resolve(flags.outDir ?? 'out', 'boot');
  const names = bootNames(desc, k.release);
  const kernel = join(boot, names.kernel!);
  await placeFile(ctx, k.image!, kernel, false); // the build's kernel stage always has an image
  let ramdisk: string | undefined;
  if (state.initramfs) {
    ramdisk = join(boot, names.ramdisk!);
    await placeFile(ctx, state.initramfs.path, ramdisk, true);
  } else if (names.ramdisk) {
    ramdisk = join(boot, names.ramdisk);
    await placeFile(ctx, resolve(flags.baseDir ?? process.cwd(), desc.kernel.ramdisk), ramdisk, false);
  }
  return { kernel, ramdisk };
}

/** The names of kernel and ramdisk in the store's boot/ (the same in --out and in every config). */
export function bootNames(desc: Description, release: string): BootFiles {
  const r = desc.kernel.ramdisk;
  return {
    kernel: `vmlinuz-${release}`,
    ramdisk: r === 'none' ? undefined : `initrd-${release}-${desc.guest.name}.${r === 'generate' ? 'gz' : 'img'}`,
  };
}
