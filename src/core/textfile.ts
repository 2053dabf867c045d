// Reading a small text file given by the user (a build description, a kconfig fragment) without
// trusting it to be one: a device or a pipe that never ends (/dev/zero) must not hang the CLI.
import { closeSync, openSync, readSync } from 'node:fs';

/** The file is larger than `max` bytes (or never ends). */
export class TooLargeError extends Error {
  constructor(readonly file: string, readonly max: number) {
    super(`${file} is larger than ${max} bytes`);
  }
}

/** The file's text, read in pieces up to `max` bytes; errno errors are thrown as they come. */
export function readTextLimited(file: string, max: number): string {
  const fd = openSync(file, 'r');
  try {
    const chunks: Buffer[] = [];
    const buf = Buffer.alloc(64 * 1024);
    let total = 0;
    for (;;) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) break;
      total += n;
      if (total > max) throw new TooLargeError(file, max);
      chunks.push(Buffer.from(buf.subarray(0, n)));
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    closeSync(fd);
  }
}
