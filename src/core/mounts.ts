// Mounts and loop devices: what /proc/self/mountinfo and `losetup -j` say, and undoing them.
// One place for the image stage's own cleanup, the journal's recovery of a dead run, and the
// store checks of publish.
import { readFileSync, realpathSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, sep } from 'node:path';
import { run, type ExecEnv } from './exec.js';

/** Decodes mountinfo's \ooo escapes (space, tab, newline, backslash). */
const decodeMountField = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

/** Mount points of this mount namespace (mountinfo escapes space and the like as \ooo). */
export async function mountPoints(): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text
    .split('\n')
    .map((l) => decodeMountField(l.split(' ')[4] ?? ''))
    .filter(Boolean);
}

export interface MountOf {
  /** The mount point holding the path. */
  mountPoint: string;
  /** The file system type as mounted (ext4, xfs, tmpfs, fuse.sshfs, …). */
  type: string;
  /** What is mounted there (/dev/vda1, tmpfs, server:/export). */
  source: string;
}

/**
 * The mount that holds `path` (its nearest existing ancestor, symlinks resolved): the mount
 * point listed last among the longest that contain it, as the kernel stacks them. Undefined when
 * mountinfo cannot be read (not Linux).
 */
export function mountOf(path: string): MountOf | undefined {
  let real: string | undefined;
  for (let d = path; real === undefined; d = dirname(d)) {
    try {
      real = realpathSync(d);
    } catch {
      if (d === dirname(d)) return undefined;
    }
  }
  let text: string;
  try {
    text = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return undefined;
  }
  let best: MountOf | undefined;
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    const mp = decodeMountField(left?.split(' ')[4] ?? '');
    const [type, source] = (right ?? '').split(' ');
    if (!mp || !type) continue;
    const holds = mp === '/' || real === mp || real.startsWith(`${mp}${sep}`);
    if (holds && (best === undefined || mp.length >= best.mountPoint.length)) best = { mountPoint: mp, type, source: decodeMountField(source ?? '') };
  }
  return best;
}

/** Whether `dir` (an absolute path) is listed as a mount point. */
export async function isMountPoint(dir: string): Promise<boolean> {
  return (await mountPoints()).includes(dir);
}

/** Unmount `dir` when it is mounted (lazily when busy); true when it was mounted. */
export async function unmountIfMounted(env: ExecEnv, dir: string): Promise<boolean> {
  if (!(await isMountPoint(dir))) return false;
  try {
    await run(env, 'umount', [dir]);
  } catch {
    await run(env, 'umount', ['-l', dir]);
  }
  return true;
}

/** The loop devices backed by `file` (`losetup -j`). */
export async function loopDevicesOf(env: ExecEnv, file: string): Promise<string[]> {
  const r = await run(env, 'losetup', ['-j', file], { okExitCodes: [0, 1] });
  return r.stdout
    .split('\n')
    .map((l) => /^(\/dev\/[^:]+):/.exec(l)?.[1])
    .filter((d): d is string => d !== undefined);
}

/** Detach every loop device backed by `file`; returns the devices detached. */
export async function detachLoops(env: ExecEnv, file: string): Promise<string[]> {
  const devs = await loopDevicesOf(env, file);
  for (const d of devs) await run(env, 'losetup', ['-d', d]);
  return devs;
}
