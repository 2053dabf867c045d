// `domu verify`: on real Xen (verify-xen.ts), or with --quick boot the build in --out under plain
// QEMU and check the guest (issue 7). What to boot comes from --out/build.json (image, kernel and
// ramdisk, applet count, modules, and the description the build ran with); a missing or
// unreadable record is bad input (exit 2), checked before anything runs (out-record.ts).
import { resolve } from 'node:path';
import { InputError } from '../../core/errors.js';
import { verifyNote, verifyStage } from '../../stages/verify.js';
import { BUILD_RECORD } from '../../model/buildrecord.js';
import { artifactPath, buildRecordFor } from './out-record.js';
import type { Plan, PlanFlags } from '../plan-types.js';
import { fileIdentity, sameIdentity } from '../uptodate.js';
import type { Description } from '../../model/schema.js';
import { planVerifyXen } from './verify-xen.js';

export interface VerifyFlags {
  /** Seconds each phase may take (--quick: to the ready marker); default 120. */
  timeoutS?: number | undefined;
  /** --quick: plain QEMU with virtio (no Xen), as before the Xen verification. */
  quick?: boolean;
}

export const DEFAULT_VERIFY_TIMEOUT_S = 120;

export function planVerify(_description: Description, flags: PlanFlags, verify: VerifyFlags): Plan {
  const out = resolve(flags.outDir ?? 'out');
  const record = buildRecordFor(out);
  if (!verify.quick) return planVerifyXen(out, record, verify.timeoutS ?? DEFAULT_VERIFY_TIMEOUT_S);
  const image = artifactPath(out, record.image.path, 'the image');
  if (!record.boot.kernel) {
    throw new InputError(`the build in ${out} shipped no guest kernel (kernel.ship is off): there is nothing to boot the image with`, 'build with the kernel shipped in boot/, then verify');
  }
  const kernel = artifactPath(out, record.boot.kernel.path, 'the guest kernel');
  const ramdisk = record.boot.ramdisk ? artifactPath(out, record.boot.ramdisk.path, 'the guest ramdisk') : undefined;
  const guest = record.description.guest;
  const timeoutS = verify.timeoutS ?? DEFAULT_VERIFY_TIMEOUT_S;
  return {
    command: 'verify',
    description: record.description,
    state: {},
    lockOut: { dir: out, create: false },
    stages: [
      {
        name: 'verify',
        title: `Boot ${record.image.path} under QEMU and check the guest`,
        run: async (ctx) => {
          if (!sameIdentity(await fileIdentity(image), record.imageFile)) {
            ctx.log.warn(`${image} changed since the build that wrote ${BUILD_RECORD}: verifying the file as it is now`);
          }
          const r = await verifyStage(
            {
              image,
              kernel: { path: kernel, sha256: record.boot.kernel!.sha256 },
              ramdisk,
              memoryMiB: guest.memory,
              rootMode: /(^|\s)rw(\s|$)/.test(guest.root) ? 'rw' : 'ro',
              applets: record.busybox.applets,
              release: record.kernel?.release ?? null,
              modules: record.modules.map((m) => m.name),
              timeoutS,
              freshProbe: flags.noCache ?? false,
            },
            ctx,
          );
          return { cacheHit: false, note: verifyNote(r), outputs: { ...r, buildHash: record.buildHash } };
        },
      },
    ],
  };
}
