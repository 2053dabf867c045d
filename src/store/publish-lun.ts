// Publishing the guest image onto its own LUN (store.disk: lun): the device is written in place,
// so everything that could make that harmful is refused first (publish.ts calls these under the
// store lock, before anything is written):
// - the device must exist (else this Dom0 has not logged in to the target), be a block device or
//   a regular file (tests, hosts that name the LUN otherwise), and hold the whole image;
// - a block device is opened O_EXCL: Linux then fails with EBUSY while it is mounted or held by
//   blkback (a domain's disk), a loop device or device-mapper — on THIS Dom0; and when `xl` works
//   here, `xl list <guest>` showing the domain refuses too. A domain on another Dom0 cannot be
//   seen from here: the operating model is to publish only while the guest is shut down.
// The write is incremental: chunk by chunk, the image (holes read as zeros, without reading them)
// is compared with the device, and only chunks that differ are written; then fsync, and the
// device is read back and its sha256 over the image's size compared with the image's. A single
// LUN cannot keep the previous image: an interrupted write leaves it half-written, and the next
// publish (comparing chunk by chunk) completes it.
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { open, readFile, stat, type FileHandle } from 'node:fs/promises';
import type { StageContext } from '../core/context.js';
import { abortError, DomuError, errorMessage, InputError } from '../core/errors.js';
import { run, which } from '../core/exec.js';
import { faultPoint } from '../core/fault.js';
import { dataOf } from '../fs/sparse.js';

export interface LunTarget {
  /** The device to write: the LUN's by-path name, or --lun-device. */
  device: string;
  /** The target and portal, for the hint to log in. */
  iqn: string;
  server: string;
  /** The domain that runs from this LUN (`xl list <guest>`). */
  guest: string;
}

export interface LunPublishOutput {
  device: string;
  kind: 'block device' | 'file';
  /** Bytes written onto the device (whole chunks that differed). */
  bytesWritten: number;
  /** Bytes compared (the image's size) and read back for the sha256. */
  bytesChecked: number;
  /** sha256 of the image, which the device's first bytesChecked bytes now have. */
  sha256: string;
}

/** Compared and written in chunks this big: small enough that a changed file rewrites little. */
export const LUN_CHUNK = 1 << 20;

export interface OpenLun {
  fh: FileHandle;
  kind: LunPublishOutput['kind'];
  size: number;
}

/** Major and minor of a device number as Linux encodes it (new_encode_dev). */
function majorMinor(rdev: number): [number, number] {
  const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
  const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff & 0xfffff);
  return [major, minor];
}

/** A block device's size in bytes: /sys counts 512-byte sectors whatever the logical block size. */
async function blockDeviceSize(rdev: number): Promise<number> {
  const [major, minor] = majorMinor(rdev);
  return Number((await readFile(`/sys/dev/block/${major}:${minor}/size`, 'utf8')).trim()) * 512;
}

const SHUT_DOWN = 'a domain on another Dom0 cannot be seen from here: publish only while the guest is shut down';

/**
 * Open the LUN for writing after every check, or refuse (InputError, nothing written). The caller
 * closes it. `imageSize`: what it must hold.
 */
export async function openLun(target: LunTarget, imageSize: number, ctx: StageContext): Promise<OpenLun> {
  const { device } = target;
  const st = await stat(device).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') {
      throw new InputError(
        `the guest's LUN ${device} does not exist: this Dom0 has not logged in to the iSCSI target ${target.iqn} on ${target.server} (or udev names the LUN otherwise); nothing was written`,
        `log in first: iscsiadm -m discovery -t st -p ${target.server}; iscsiadm -m node -T ${target.iqn} -p ${target.server} -l (the name then appears), or give the device with --lun-device`,
      );
    }
    throw e;
  });
  const block = st.isBlockDevice();
  if (!block && !st.isFile()) {
    throw new InputError(`the guest's LUN ${device} is neither a block device nor a regular file; nothing was written`, 'give the LUN\'s device (--lun-device), or set store.disk: file');
  }
  const size = block ? await blockDeviceSize(st.rdev) : st.size;
  if (size < imageSize) {
    throw new InputError(
      `the guest's LUN ${device} is ${size} bytes, smaller than the image (${imageSize} bytes); nothing was written`,
      'give the LUN a backing store at least image.size big (store.disk_backing_store), or a smaller image.size',
    );
  }
  await refuseRunningDomain(target, ctx);
  let fh: FileHandle;
  try {
    // O_EXCL without O_CREAT on a block device: exclusive, so a holder on this host fails us.
    fh = await open(device, block ? constants.O_RDWR | constants.O_EXCL : constants.O_RDWR);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EBUSY') {
      throw new InputError(
        `the guest's LUN ${device} is in use on this Dom0 (EBUSY: mounted, or held by a running domain's blkback, a loop device or device-mapper); nothing was written`,
        `shut the guest down or migrate it away, unmount the device, and publish again; ${SHUT_DOWN}`,
      );
    }
    throw e;
  }
  return { fh, kind: block ? 'block device' : 'file', size };
}

/** `xl list <guest>` answering with the domain: it runs here, on this LUN. */
async function refuseRunningDomain(target: LunTarget, ctx: StageContext): Promise<void> {
  if (!(await which('xl'))) return;
  let r;
  try {
    // Exit 1 with "not a valid domain" when it does not run; anything else: xl cannot tell (no hypervisor).
    r = await run(ctx, 'xl', ['list', target.guest], { okExitCodes: [0, 1], timeoutMs: 30_000 });
  } catch (e) {
    ctx.log.debug(`xl list ${target.guest}: ${errorMessage(e)}; cannot tell whether the domain runs here`);
    return;
  }
  if (r.exitCode === 0 && new RegExp(`^${target.guest.replace(/[.]/g, '\\.')}\\s+\\d+`, 'm').test(r.stdout)) {
    throw new InputError(
      `the domain ${target.guest} is running on this Dom0 (xl list) from the LUN ${target.device}: refusing to write under it; nothing was written`,
      `shut it down (xl shutdown ${target.guest}) or migrate it away first; ${SHUT_DOWN}`,
    );
  }
}

/** Whether the [start, end) range lies inside a hole of the image (no data range meets it). */
function inHole(ranges: [number, number][], start: number, end: number): boolean {
  return !ranges.some(([s, e]) => s < end && e > start);
}

/**
 * Write `image` onto the opened LUN, only where it differs; fsync; read back and compare sha256.
 * The LUN is half-written when this fails or is interrupted midway (said in the docs).
 */
export async function writeLun(image: string, imageSize: number, lun: OpenLun, target: LunTarget, ctx: StageContext, afterChunk?: (bytesDone: number) => Promise<void> | void): Promise<LunPublishOutput> {
  const ranges = await dataOf(ctx, image, imageSize);
  const img = await open(image, 'r');
  const want = Buffer.alloc(LUN_CHUNK);
  const have = Buffer.alloc(LUN_CHUNK);
  const hash = createHash('sha256');
  let written = 0;
  try {
    for (let pos = 0; pos < imageSize; pos += LUN_CHUNK) {
      const n = Math.min(LUN_CHUNK, imageSize - pos);
      const w = want.subarray(0, n);
      if (inHole(ranges, pos, pos + n)) w.fill(0); // a hole reads as zeros: no need to read it
      else await readFully(img, w, pos, image);
      hash.update(w);
      await readFully(lun.fh, have.subarray(0, n), pos, target.device);
      if (!w.equals(have.subarray(0, n))) {
        for (let off = 0; off < n; ) off += (await lun.fh.write(w, off, n - off, pos + off)).bytesWritten;
        written += n;
      }
      ctx.progress(`${target.device}: ${mib(pos + n)} / ${mib(imageSize)} compared, ${mib(written)} written`);
      await afterChunk?.(pos + n);
      await faultPoint('publish:lun', ctx.signal);
      if (ctx.signal.aborted) throw abortError(ctx.signal);
    }
    await lun.fh.sync();
  } finally {
    await img.close();
  }
  const sha256 = hash.digest('hex');
  const back = await readBack(lun, imageSize, target, ctx);
  if (back !== sha256) {
    throw new DomuError(`the guest's LUN ${target.device} does not read back as the image: sha256 ${back} over ${imageSize} bytes, the image has ${sha256}`, {
      hint: 'the device lost writes (check dmesg and the iSCSI session); publish again, and do not start the guest until it succeeds',
    });
  }
  ctx.log.info(`published ${image} onto ${target.device} (${lun.kind}): ${written} bytes written, ${imageSize} bytes checked, sha256 ${sha256}`);
  return { device: target.device, kind: lun.kind, bytesWritten: written, bytesChecked: imageSize, sha256 };
}

/**
 * sha256 of the device's first `size` bytes. A block device's clean cached pages are dropped
 * first (blockdev --flushbufs), so that what is read comes from the device, not from our writes
 * still in the page cache.
 */
async function readBack(lun: OpenLun, size: number, target: LunTarget, ctx: StageContext): Promise<string> {
  if (lun.kind === 'block device') {
    await run(ctx, 'blockdev', ['--flushbufs', target.device]).catch((e: unknown) => ctx.log.debug(`blockdev --flushbufs ${target.device}: ${errorMessage(e)}; reading back through the page cache`));
  }
  const h = createHash('sha256');
  const buf = Buffer.alloc(4 * LUN_CHUNK);
  for (let pos = 0; pos < size; ) {
    const n = Math.min(buf.length, size - pos);
    await readFully(lun.fh, buf.subarray(0, n), pos, target.device);
    h.update(buf.subarray(0, n));
    pos += n;
    ctx.progress(`${target.device}: ${mib(pos)} / ${mib(size)} read back`);
    if (ctx.signal.aborted) throw abortError(ctx.signal);
  }
  return h.digest('hex');
}

async function readFully(fh: FileHandle, buf: Buffer, pos: number, what: string): Promise<void> {
  for (let off = 0; off < buf.length; ) {
    const { bytesRead } = await fh.read(buf, off, buf.length - off, pos + off);
    if (bytesRead === 0) throw new DomuError(`${what} ended at ${pos + off} bytes while it was being published (it shrank?); publish again`);
    off += bytesRead;
  }
}

function mib(n: number): string {
  return `${(n / 1048576).toFixed(1)} MiB`;
}
