// Can the guest kernel boot as a PVH guest? It needs CONFIG_XEN_PVH=y, which shows in two places:
//   1. the kernel's config, `config-<release>` beside the image (Debian's packages and /boot
//      carry it): `CONFIG_XEN_PVH=y` or `# CONFIG_XEN_PVH is not set`;
//   2. when there is no config: the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 18, owner "Xen")
//      of the vmlinux inside the bzImage, the 32-bit entry point Xen starts a PVH guest at. The
//      vmlinux is the bzImage's payload (setup header: payload_offset at 0x248, payload_length
//      at 0x24c, boot protocol 2.08+), compressed; the kernel appends the uncompressed size as 4
//      bytes, which are cut before decompressing (gzip in-process, xz and zstd through their
//      programs). About a second for Debian's 8 MB xz image: the config route is preferred.
import { access, open, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { gunzip } from 'node:zlib';
import { DomuError, errorMessage } from '../core/errors.js';
import type { ExecEnv } from '../core/exec.js';
import { parseElf, PT_NOTE } from './elf.js';
import { decompressFile } from './modinfo.js';

/** XEN_ELFNOTE_PHYS32_ENTRY (xen/include/public/elfnote.h): the PVH entry point. */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

export interface PvhVerdict {
  /** true: it boots as PVH; false: it does not; undefined: nothing tells. */
  pvh: boolean | undefined;
  /** Where the verdict comes from, in words (a file and a line, or the ELF note). */
  evidence: string;
}

/** The verdict of a kernel config's text (`CONFIG_XEN_PVH=y`, else not). */
export function pvhFromConfig(text: string): boolean {
  return /^CONFIG_XEN_PVH=y$/m.test(text);
}

/** The Xen notes of an ELF file (owner "Xen"): their types. */
export function xenNoteTypes(elf: Uint8Array, label: string): number[] {
  const f = parseElf(elf, label);
  const le = f.endian === 'little';
  const view = new DataView(elf.buffer, elf.byteOffset, elf.byteLength);
  const types: number[] = [];
  for (const ph of f.programHeaders) {
    if (ph.type !== PT_NOTE) continue;
    let off = ph.offset;
    const end = Math.min(ph.offset + ph.filesz, elf.byteLength);
    while (off + 12 <= end) {
      const namesz = view.getUint32(off, le);
      const descsz = view.getUint32(off + 4, le);
      const type = view.getUint32(off + 8, le);
      const name = Buffer.from(elf.buffer, elf.byteOffset + off + 12, Math.min(namesz, Math.max(0, end - off - 12))).toString('latin1').replace(/\0+$/, '');
      if (name === 'Xen') types.push(type);
      off += 12 + Math.ceil(namesz / 4) * 4 + Math.ceil(descsz / 4) * 4;
    }
  }
  return types;
}

type Compression = 'gzip' | 'xz' | 'zstd';

function compressionOf(b: Uint8Array): Compression | string {
  const hex = Buffer.from(b.subarray(0, 6)).toString('hex');
  if (hex.startsWith('1f8b')) return 'gzip';
  if (hex === 'fd377a585a00') return 'xz';
  if (hex.startsWith('28b52ffd')) return 'zstd';
  if (hex.startsWith('425a68')) return 'bzip2';
  if (hex.startsWith('894c5a4f')) return 'lzo';
  if (hex.startsWith('02214c18')) return 'lz4';
  return 'an unknown format';
}

/** The compressed vmlinux of a bzImage (without the appended size). */
async function bzImagePayload(image: string): Promise<Buffer> {
  const fh = await open(image, 'r');
  try {
    const hdr = Buffer.alloc(0x250);
    const { bytesRead } = await fh.read(hdr, 0, hdr.length, 0);
    if (bytesRead < hdr.length || hdr.toString('latin1', 0x202, 0x206) !== 'HdrS') throw new DomuError(`${image}: not an x86 bzImage`);
    if (hdr.readUInt16LE(0x206) < 0x208) throw new DomuError(`${image}: boot protocol ${hdr.readUInt16LE(0x206).toString(16)} has no payload fields (2.08+)`);
    const setupSects = hdr[0x1f1] || 4;
    const start = (setupSects + 1) * 512 + hdr.readUInt32LE(0x248);
    const length = hdr.readUInt32LE(0x24c);
    if (length <= 4) throw new DomuError(`${image}: the bzImage has no payload`);
    const payload = Buffer.alloc(length - 4);
    const got = (await fh.read(payload, 0, payload.length, start)).bytesRead;
    if (got < payload.length) throw new DomuError(`${image}: truncated bzImage (payload ends past the file)`);
    return payload;
  } finally {
    await fh.close();
  }
}

/** The vmlinux ELF inside a bzImage; `scratch` is a directory for the compressed payload. */
export async function vmlinuxOf(env: ExecEnv, image: string, scratch: string): Promise<Buffer> {
  const payload = await bzImagePayload(image);
  const kind = compressionOf(payload);
  if (kind === 'gzip') return promisify(gunzip)(payload);
  if (kind !== 'xz' && kind !== 'zstd') throw new DomuError(`${image}: its payload is ${kind}-compressed, which domu does not unpack (gzip, xz, zstd)`);
  const file = join(scratch, `vmlinux-payload.${kind}`);
  await writeFile(file, payload);
  return decompressFile(env, kind, file);
}

/** Whether the kernel `image` of `release` boots as PVH, and how that is known. */
export async function kernelPvhSupport(env: ExecEnv, image: string, release: string, scratch: string): Promise<PvhVerdict> {
  const config = join(dirname(image), `config-${release}`);
  const text = await readFile(config, 'utf8').catch(() => undefined);
  if (text !== undefined) {
    const pvh = pvhFromConfig(text);
    return { pvh, evidence: `${config}: ${pvh ? 'CONFIG_XEN_PVH=y' : 'CONFIG_XEN_PVH is not set'}` };
  }
  await access(image);
  try {
    const types = xenNoteTypes(await vmlinuxOf(env, image, scratch), `the vmlinux in ${basename(image)}`);
    const pvh = types.includes(XEN_ELFNOTE_PHYS32_ENTRY);
    const what = types.length === 0 ? 'no Xen ELF notes' : pvh ? 'the Xen ELF note PHYS32_ENTRY' : 'Xen ELF notes, but no PHYS32_ENTRY';
    return { pvh, evidence: `${image} (no ${basename(config)} beside it): ${what}` };
  } catch (e) {
    if (env.signal.aborted) throw e;
    return { pvh: undefined, evidence: `${image}: no ${basename(config)} beside it, and its ELF notes cannot be read (${errorMessage(e)})` };
  }
}
