// The image stage's own resources (image.ts), undone by the stage when it fails, and the classic
// population of an image through a loop device and a mount (root only; not reproducible).
import { mkdtemp, rmdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { abortError, DomuError, errorMessage } from '../core/errors.js';
import { run, type ExecEnv } from '../core/exec.js';
import type { JournalResource } from '../core/journal.js';
import { faultPoint } from '../core/fault.js';
import { detachLoops, unmountIfMounted } from '../core/mounts.js';
import type { StageContext } from '../core/context.js';
import type { DeviceSpec as DeviceNode } from '../fs/devtable.js';

// ---------------------------------------------------------------------------------------------
// Resources: the cleanup registry entries this stage made, undone by the stage itself on failure

export class Resources {
  private readonly stack: { label: string; undo: () => Promise<void> | void; release: () => void }[] = [];
  constructor(private readonly ctx: StageContext) {}

  /** Register an undo action (before the resource exists); returns `done` for a normal release. */
  add(label: string, undo: () => Promise<void> | void, resource?: JournalResource): { undoNow: () => Promise<void> } {
    const release = this.ctx.cleanup.push(label, undo, resource);
    const entry = { label, undo, release };
    this.stack.push(entry);
    return {
      // The resource is given back normally (umount, detach): do it, then drop the entry.
      undoNow: async () => {
        await undo();
        release();
        const i = this.stack.indexOf(entry);
        if (i >= 0) this.stack.splice(i, 1);
      },
    };
  }

  /** Success: the remaining resources are kept (e.g. the temp file was renamed into place). */
  releaseAll(): void {
    for (const e of this.stack.splice(0)) e.release();
  }

  /** Failure or abort: undo newest first; an entry that fails to undo stays with the registry. */
  async undoAll(): Promise<void> {
    while (this.stack.length) {
      const e = this.stack.pop()!;
      try {
        this.ctx.log.debug(`cleanup: ${e.label}`);
        await e.undo();
        e.release();
      } catch (err) {
        this.ctx.log.warn(`cleanup failed: ${e.label}: ${errorMessage(err)} (left to the run's cleanup)`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Loop-mount population (root only; not reproducible, see the top of the file)

/** Commands of cleanups run after an abort, so they get a signal of their own. */
function cleanupEnv(ctx: StageContext): ExecEnv {
  return { log: ctx.log, signal: new AbortController().signal };
}

export async function populateByMount(ctx: StageContext, res: Resources, tmp: string, staging: string, devices: DeviceNode[]): Promise<void> {
  const env = cleanupEnv(ctx);
  // Registered before losetup creates it: whatever loop device backs tmp is detached.
  const loop = res.add(`detach loop devices of ${tmp}`, async () => void (await detachLoops(env, tmp)), { kind: 'loop', file: tmp });
  const dev = (await run(ctx, 'losetup', ['--find', '--show', tmp])).stdout.trim();
  if (!dev.startsWith('/dev/')) throw new DomuError(`losetup --find --show ${tmp} printed ${JSON.stringify(dev)}`);
  const mnt = await mkdtemp(join(tmpdir(), 'domu-mnt-'));
  const mountDir = res.add(`remove mount point ${mnt}`, () => rmdir(mnt).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  }), { kind: 'path', path: mnt });
  // Registered before mount: unmounted if mounted (lazily when busy).
  const mounted = res.add(`unmount ${mnt}`, async () => void (await unmountIfMounted(env, mnt)), { kind: 'mount', path: mnt });
  await run(ctx, 'mount', ['-t', 'ext4', '-o', 'nodev,nosuid,noexec', dev, mnt]);
  ctx.log.info(`populating ${tmp} (mount)`);
  await faultPoint('image:mounted', ctx.signal);
  try {
    await run(ctx, 'cp', ['-a', '--', `${staging}/.`, `${mnt}/`]);
  } catch (e) {
    if (/No space left on device/.test(errorMessage(e))) throw Object.assign(new DomuError(`the image is full: ${errorMessage(e)}`), { imageFull: true });
    throw e;
  }
  await run(ctx, 'chown', ['-hR', '0:0', '--', mnt]);
  for (const dir of new Set(devices.map((d) => dirname(join(mnt, d.path))))) await run(ctx, 'mkdir', ['-p', '--', dir]);
  for (const d of devices) {
    const p = join(mnt, d.path);
    await run(ctx, 'mknod', ['-m', `0${(d.mode & 0o7777).toString(8)}`, '--', p, d.type, String(d.major), String(d.minor)]);
    await run(ctx, 'chown', ['-h', `${d.uid}:${d.gid}`, '--', p]);
  }
  await run(ctx, 'sync', ['-f', mnt]);
  if (ctx.signal.aborted) throw abortError(ctx.signal);
  await mounted.undoNow();
  await mountDir.undoNow();
  await loop.undoNow();
}
