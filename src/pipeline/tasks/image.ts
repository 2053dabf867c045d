// Pipeline tasks of the guest disk: rootfs and image, and placing kernel and ramdisk in --out/boot.
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, rename, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { tempPathFor } from '../../lib/atomic.js';
import { InputError } from '../../lib/errors.js';
import { imageStage } from '../../stages/image.js';
import { rootfsStage } from '../../stages/rootfs.js';
import { newestMtime } from '../../lib/epoch.js';
import { parseDeviceTable } from '../../lib/devtable.js';
import type { BootFiles } from '../../stages/xenconfigs.js';
import type { PipelineStage } from '../run.js';
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
      const r = await rootfsStage(
        { installTree: state.compile!.installTree, skel, deviceTable, guest: desc.guest, ...(m ? { modules: { files: m.files, etcModules: m.etcModules } } : {}) },
        ctx,
      );
      state.rootfs = r;
      return { cacheHit: false, note: `${r.files} files, ${r.symlinks} links, ${r.devices.length} device nodes`, outputs: { ...r } };
    },
  };
}

export function imageTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const output = resolve(flags.outDir ?? 'out', desc.image.file);
  return {
    name: 'image',
    title: `Build the ext4 image ${desc.image.file}`,
    run: async (ctx) => {
      const r = state.rootfs!;
      const sourceDateEpoch = flags.sourceDateEpoch ?? (await newestMtime(state.extract!.tree));
      await mkdir(dirname(output), { recursive: true });
      const img = await imageStage(
        { staging: r.staging, devices: r.devices, output, size: desc.image.size, label: desc.guest.name, populate: desc.image.populate, sourceDateEpoch, contentHash: r.contentHash },
        ctx,
      );
      state.image = img;
      await rm(r.staging, { recursive: true, force: true }); // its content is in the image now
      if (desc.kernel.ship) state.boot = await placeBoot(desc, flags, state);
      const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
      return { cacheHit: false, note: `${mib(img.apparentBytes)} apparent, ${mib(img.allocatedBytes)} allocated (${img.populate})`, outputs: { ...img, sourceDateEpoch, boot: state.boot ?? null } };
    },
  };
}

/** Put `src` at `dest` atomically (copy to a temp name beside it, then rename). */
export async function placeFile(src: string, dest: string, move: boolean): Promise<void> {
  await mkdir(dirname(dest), { recursive: true });
  const tmp = tempPathFor(dest);
  try {
    if (move) await rename(src, tmp).catch(() => copyFile(src, tmp));
    else await copyFile(src, tmp);
    await rename(tmp, dest);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}

/**
 * The guest kernel and ramdisk into `<out>/boot/`, after the image succeeded, so that a failed
 * build never leaves a new kernel beside an old image.
 */
export async function placeBoot(desc: Description, flags: PlanFlags, state: PlanState): Promise<PlanState['boot']> {
  const k = state.kernel;
  if (!k) return undefined;
  const boot = resolve(flags.outDir ?? 'out', 'boot');
  const names = bootNames(desc, k.release);
  const kernel = join(boot, names.kernel!);
  await placeFile(k.image!, kernel, false); // the build's kernel stage always has an image
  let ramdisk: string | undefined;
  if (state.initramfs) {
    ramdisk = join(boot, names.ramdisk!);
    await placeFile(state.initramfs.path, ramdisk, true);
  } else if (names.ramdisk) {
    ramdisk = join(boot, names.ramdisk);
    await placeFile(resolve(flags.baseDir ?? process.cwd(), desc.kernel.ramdisk), ramdisk, false);
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
