// Is the store a store: a writable directory, a mount point (unless allowed otherwise), not a
// system directory of the Dom0, and without a symbolic link where domu's lock file goes. Checked
// before publish writes anything (publish.ts).
import { constants } from 'node:fs';
import { access, lstat, realpath, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { tempPathFor } from '../core/atomic.js';
import { errorMessage, InputError } from '../core/errors.js';
import { isMountPoint as isListedMount } from '../core/mounts.js';
import { findNoSpace, noSpaceError } from '../core/stage-errors.js';
import { lockPath, writeNewFileDurable } from './storelock.js';

/** Directories of the Dom0's own system that are never the shared store. */
const SYSTEM_DIRS = new Set(['/', '/bin', '/boot', '/dev', '/dev/shm', '/etc', '/lib', '/lib32', '/lib64', '/proc', '/run', '/sbin', '/sys', '/usr', '/var']);

/** The store is a writable directory and (unless allowed otherwise) a mount point; its real path. */
export async function checkStore(given: string, allowUnmounted: boolean): Promise<string> {
  const path = resolve(given);
  const st = await stat(path).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new InputError(`the store ${path} is not a directory${st ? '' : ' (it does not exist)'}`, 'mount the store there, or set store.path to where it is mounted');
  }
  const real = await realpath(path);
  // These are mount points (so the check below passes) but never the shared store: publishing
  // there would put boot/, xen/ and the image into the Dom0's own system (e.g. --store /).
  if (SYSTEM_DIRS.has(real)) {
    throw new InputError(
      `the store ${path}${real === path ? '' : ` (${real})`} is a system directory of this host, not the shared store; nothing was written`,
      'mount the store at its own directory (store.path, e.g. /scsistore) and publish there',
    );
  }
  if (!allowUnmounted && !(await isMountPoint(real))) {
    throw new InputError(
      `the store ${path} is not a mount point: the shared store does not seem to be mounted there, and publishing would write into the directory below it`,
      'mount the store (e.g. the iSCSI LUN) there first, or pass --allow-unmounted for a local store',
    );
  }
  const probe = tempPathFor(join(real, '.domu-probe'));
  try {
    await access(real, constants.W_OK);
    await writeNewFileDurable(probe, 'probe\n');
  } catch (e) {
    const full = findNoSpace(e); // writable, but full: not the user's mount options
    if (full) throw noSpaceError({ code: full.code, dir: path, role: 'store', doing: 'checking that the store is writable', note: 'nothing was written', cause: e });
    throw new InputError(`the store ${path} is not writable (${fsReason(e)})`, 'mount it read-write (mount -o remount,rw), or publish as a user who may write there');
  } finally {
    await rm(probe, { force: true }).catch(() => undefined);
  }
  // domu's lock is always a regular file (storelock.ts); a symlink there would be followed when
  // the lock is read (a file outside the store), and a dangling one looks like no lock at all.
  const lock = lockPath(real);
  if ((await lstat(lock).catch(() => undefined))?.isSymbolicLink()) {
    const to = await realpath(lock).catch(() => undefined);
    throw new InputError(
      `the store lock ${lock} is a symbolic link (to ${to ?? 'nowhere'}), not domu's lock file; nothing was written`,
      `if no publish is running on any host, remove ${lock} by hand and publish again`,
    );
  }
  return real;
}

function fsReason(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'EROFS') return 'read-only file system';
  if (code === 'EACCES' || code === 'EPERM') return 'permission denied';
  return errorMessage(e);
}

/** A different device than its parent, or listed in /proc/self/mountinfo (bind mounts). */
async function isMountPoint(dir: string): Promise<boolean> {
  if (dir === '/') return true;
  const [a, b] = await Promise.all([stat(dir), stat(dirname(dir))]);
  if (a.dev !== b.dev) return true;
  return isListedMount(dir);
}
