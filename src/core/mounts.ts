// Mounts and loop devices: what /proc/self/mountinfo and `losetup -j` say, and undoing them.
// One place for the image stage's own cleanup, the journal's recovery of a dead run, and the
// store checks of publish.
import { readFile } from 'node:fs/promises';
import { run, type ExecEnv } from './exec.js';

/** Mount points of this mount namespace (mountinfo escapes space and the like as \ooo). */
export async function mountPoints(): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  return text
    .split('\n')
    .map((l) => (l.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter(Boolean);
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
