// Pipeline tasks of the store: the xen configs, the store check and --publish.
import { count } from '../../core/plural.js';
import { existsSync } from 'node:fs';
import { join, relative, resolve } from 'node:path';
import { InputError } from '../../core/errors.js';
import { fileDiskWarning, writeConfigs } from '../../stages/xenconfigs.js';
import { renderConfigsKept } from '../../stages/xenconfigs-kept.js';
import { checkImageFits } from '../../core/filesize.js';
import { publish, type LunTarget } from '../../store/publish.js';
import { openLun } from '../../store/publish-lun.js';
import { recordLunPublish } from '../../model/buildrecord.js';
import { lunDevicePath } from '../../xen/lun.js';
import { checkStore } from '../../store/store-check.js';
import type { PipelineStage } from '../run.js';
import type { Description } from '../../model/schema.js';
import type { PlanFlags, PlanState } from '../plan-types.js';
import { bootNames } from './image.js';

/**
 * The xen configs stage: rendered once at plan time with a placeholder release, so that a bad
 * inventory (unsafe values, hosts that disagree) is exit 2 before anything runs; rendered for
 * real and written into --out when the stage runs (after the image, in a build).
 */
export function xenConfigsTask(desc: Description, flags: PlanFlags, state: PlanState): PipelineStage {
  const opts = { allowInconsistent: flags.allowInconsistent ?? false };
  const planBoot = bootNames(desc, '0.0.0-plan');
  // A render kept in the cache (stages/xenconfigs-kept.ts) proves these inputs render; --no-cache renders.
  renderConfigsKept(flags.noCache ? undefined : flags.cacheDir, desc, planBoot, opts, false);
  const out = resolve(flags.outDir ?? 'out');
  return {
    name: 'xen configs',
    title: `Render the Xen configs for ${desc.hosts.length} host${desc.hosts.length === 1 ? '' : 's'}`,
    run: async (ctx) => {
      const boot = state.kernel ? bootNames(desc, state.kernel.release) : {};
      const memo = flags.noCache ? undefined : ctx.cache.root;
      const result = renderConfigsKept(memo, desc, boot, opts, true);
      renderConfigsKept(memo, desc, planBoot, opts, true); // for the plan-time check of the next run
      const c = await writeConfigs(result, out, ctx);
      // Once a run (build or configs), whatever the number of hosts and files written.
      const risk = fileDiskWarning(desc);
      if (risk) ctx.log.warn(risk);
      state.configs = c;
      return { cacheHit: false, note: `${count(c.files.length, 'file')} (${c.written} written, ${c.unchanged} unchanged)`, outputs: { ...c } };
    },
  };
}

/**
 * With --publish, the store is checked first, so a build does not run only to find it unusable;
 * with `imageSize` (a build), also that its file system can hold the image as a file.
 */
export function storeCheckTask(desc: Description, flags: PlanFlags, imageSize?: number): PipelineStage {
  const store = resolve(flags.publish!.store ?? desc.store.path);
  const lun = lunTarget(desc, flags);
  return {
    name: 'store',
    title: `Check the store ${store}${lun && imageSize !== undefined ? ` and the LUN ${lun.device}` : ''}`,
    run: async (ctx) => {
      const real = await checkStore(store, flags.publish!.allowUnmounted);
      if (imageSize !== undefined && lun) {
        // The image goes onto the LUN: refused now (missing, too small, in use) rather than after the build.
        await (await openLun(lun, imageSize, ctx)).fh.close();
      } else if (imageSize !== undefined) {
        await checkImageFits({ dir: real, size: imageSize, where: 'store', register: (p) => ctx.cleanup.tempPath(p), log: ctx.log });
      }
      return { cacheHit: false, note: real, outputs: { store: real, ...(lun && imageSize !== undefined ? { lunDevice: lun.device } : {}) } };
    },
  };
}

/** With store.disk lun, the LUN the image is published onto (--lun-device, else its by-path name). */
function lunTarget(desc: Description, flags: PlanFlags): LunTarget | undefined {
  const given = flags.publish?.lunDevice;
  if (desc.store.disk !== 'lun') {
    if (given !== undefined) throw new InputError(`--lun-device ${given}: only applies with store.disk: lun (store.disk is ${desc.store.disk})`, 'set store.disk: lun (e.g. --set store.disk=lun), or drop --lun-device');
    return undefined;
  }
  return { device: given ?? lunDevicePath(desc), iqn: desc.store.iqn, server: desc.store.server, guest: desc.guest.name };
}

/**
 * --publish: the --out tree into the store (store/publish.ts: lock, hand-edit check, temp + fsync
 * + rename, the previous image kept as .prev). A build publishes the image, boot/ and the
 * configs; `domu configs` the configs only, and warns when they name boot files the store lacks.
 */
export function publishTask(desc: Description, flags: PlanFlags, state: PlanState, what: 'build' | 'configs'): PipelineStage {
  const opts = flags.publish!;
  const store = resolve(opts.store ?? desc.store.path);
  const out = resolve(flags.outDir ?? 'out');
  return {
    name: 'publish',
    title: `Publish to ${store}`,
    run: async (ctx) => {
      const files = [...(state.configs?.files ?? [])];
      let image: string | undefined;
      const lun = what === 'build' ? lunTarget(desc, flags) : undefined;
      if (what === 'build') {
        image = lun ? undefined : desc.image.file;
        const boot = state.boot;
        for (const p of [boot?.kernel, boot?.ramdisk]) if (p) files.unshift(relative(out, p));
      } else {
        for (const f of [state.kernel && bootNames(desc, state.kernel.release)].flatMap((b) => (b && desc.kernel.ship ? [b.kernel, b.ramdisk] : []))) {
          if (f && !existsSync(join(store, 'boot', f))) ctx.log.warn(`the configs name boot/${f}, which ${store} does not have yet: publish a build (domu build --publish) before starting the guest`);
        }
      }
      const onto = lun ? { lun: { image: desc.image.file, target: lun } } : {};
      const r = await publish({ outDir: out, store, files, image, ...onto, force: opts.force, allowUnmounted: opts.allowUnmounted, lockTimeoutMs: opts.lockTimeoutMs, command: `domu ${what}` }, ctx);
      state.published = { ...r, store };
      if (r.lun) await recordLunPublish(out, r.lun);
      const lunNote = r.lun ? `; image onto ${r.lun.device}: ${r.lun.bytesWritten} bytes written, ${r.lun.bytesChecked} checked` : '';
      return { cacheHit: false, note: `${r.written.length} written, ${r.unchanged.length} unchanged${r.backups.length ? `, ${r.backups.length} .bak kept` : ''}${lunNote}`, outputs: { store, ...r } };
    },
  };
}
