// Errors a user can act on. The CLI prints `message` (and `hint`) on one line and exits with
// `exitCode`; anything that is not a DomuError is a bug and is reported with its stack.

/** Exit codes of the CLI (design.md): 1 build failure, 2 bad input. */
export const EXIT_BUILD_FAILURE = 1;
export const EXIT_BAD_INPUT = 2;

export class DomuError extends Error {
  readonly exitCode: number;
  readonly hint: string | undefined;
  constructor(message: string, opts: { exitCode?: number; hint?: string; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'DomuError';
    this.exitCode = opts.exitCode ?? EXIT_BUILD_FAILURE;
    this.hint = opts.hint;
  }
}

/** Bad input from the user (description, flags, a given file): exit 2, no stage runs. */
export class InputError extends DomuError {
  constructor(message: string, hint?: string) {
    super(message, { exitCode: EXIT_BAD_INPUT, ...(hint === undefined ? {} : { hint }) });
    this.name = 'InputError';
  }
}

/** The run was interrupted by SIGINT/SIGTERM or an abort. */
export class AbortedError extends DomuError {
  /** `reason` is the signal name (SIGINT, SIGTERM) or a short phrase. Exit 130/143 as shells do. */
  constructor(readonly reason = 'abort') {
    super(`interrupted by ${reason}; everything the run had started was undone`, { exitCode: reason === 'SIGTERM' ? 143 : 130 });
    this.name = 'AbortedError';
  }
}

/** The AbortedError a signal carries (Run.abort puts one there), or a fresh one. */
export function abortError(signal: AbortSignal): AbortedError {
  return signal.reason instanceof AbortedError ? signal.reason : new AbortedError();
}

const FS_REASONS: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on the device',
  EDQUOT: 'disk quota exceeded',
  ENOTDIR: 'a part of the path is not a directory',
  EISDIR: 'is a directory',
  ENOENT: 'no such file or directory',
  EEXIST: 'something else is already there (e.g. a file where a directory is needed)',
  ENAMETOOLONG: 'the name is too long (at most 255 bytes a name, 4095 a path)',
  ELOOP: 'too many levels of symbolic links (a link that leads back to itself?)',
  EFBIG: 'the file is too large for its file system (or for ulimit -f)',
  EMFILE: 'too many open files in this process (ulimit -n)',
  ENFILE: 'too many open files on this system',
  ENOTEMPTY: 'the directory is not empty',
  EBUSY: 'it is busy (a mount point, or a device in use)',
  ETXTBSY: 'it is a program that is running',
  ENXIO: 'no such device or address (a socket, or a device without its driver)',
  ENODEV: 'no such device',
  EIO: 'input/output error (a failing disk, or a network file system that went away)',
  ESTALE: 'stale file handle (the network file system changed under it)',
};

/** Errors that are about the machine even without a path (Node leaves it out for fd operations). */
const NO_PATH_NEEDED = new Set(['ENOSPC', 'EDQUOT', 'EFBIG', 'EMFILE', 'ENFILE', 'EIO', 'EROFS']);

const FS_HINTS: Record<string, string> = {
  ENAMETOOLONG: 'use shorter names for --out, --cache-dir and the files the build description names',
  ELOOP: 'check the symbolic links on that path',
  EFBIG: 'choose a smaller image.size, or --out on a file system that holds bigger files',
  EMFILE: 'raise the limit of open files (ulimit -n 4096) and run again',
  ENFILE: 'close some programs, or raise fs.file-max, and run again',
  EIO: 'check the disk (dmesg) or the network file system, then run again',
  ESTALE: 'check the network file system, then run again',
};

/**
 * A file-system error from Node (EACCES on the cache, ENOTDIR in --out, ENAMETOOLONG, EFBIG...)
 * is about the user's machine, not a bug: one line naming the path, no stack trace. Anything
 * else passes.
 */
export function asDomuError(e: unknown): unknown {
  const err = e as NodeJS.ErrnoException;
  if (e instanceof DomuError || !(e instanceof Error) || !err.code || !(err.code in FS_REASONS)) return e;
  if (!err.path && !(NO_PATH_NEEDED.has(err.code) && err.syscall)) return e;
  const what = err.path ? `${err.syscall ?? 'use'} ${err.path}` : err.syscall!;
  return new DomuError(`cannot ${what}: ${FS_REASONS[err.code]}`, {
    hint: FS_HINTS[err.code] ?? 'check --out, --cache-dir and the permissions and free space there',
    cause: e,
  });
}

export function errorMessage(e: unknown): string {
  if (e instanceof Error) return e.message;
  return String(e);
}
