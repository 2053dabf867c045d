// A small ELF reader, so that checking a binary (static or not, which interpreter, which
// libraries, which machine) or reading a kernel module's .modinfo needs no readelf/objcopy at
// run time. ELF32 and ELF64, little- and big-endian. Every offset and table is checked against
// the file's size: a truncated or corrupt file gives a DomuError naming the file, never a
// RangeError or garbage.
import { readFile } from 'node:fs/promises';
import { DomuError, errorMessage } from '../core/errors.js';

export const ET_NONE = 0;
export const ET_REL = 1;
export const ET_EXEC = 2;
export const ET_DYN = 3;
export const ET_CORE = 4;

export const PT_NULL = 0;
export const PT_LOAD = 1;
export const PT_DYNAMIC = 2;
export const PT_INTERP = 3;
export const PT_NOTE = 4;
export const PT_PHDR = 6;

export const SHT_NULL = 0;
export const SHT_PROGBITS = 1;
export const SHT_STRTAB = 3;
export const SHT_DYNAMIC = 6;
export const SHT_NOBITS = 8;

export const DT_NULL = 0;
export const DT_NEEDED = 1;
export const DT_STRTAB = 5;
export const DT_STRSZ = 10;

const SHN_UNDEF = 0;
const SHN_XINDEX = 0xffff;
const PN_XNUM = 0xffff;

const TYPE_NAMES: Record<number, string> = { 0: 'NONE', 1: 'REL', 2: 'EXEC', 3: 'DYN', 4: 'CORE' };

const MACHINE_NAMES: Record<number, string> = {
  0: 'none',
  2: 'sparc',
  3: 'i386',
  8: 'mips',
  20: 'ppc',
  21: 'ppc64',
  22: 's390',
  40: 'arm',
  43: 'sparc64',
  50: 'ia64',
  62: 'x86-64',
  183: 'aarch64',
  243: 'riscv',
  258: 'loongarch',
};

export function machineName(machine: number): string {
  return MACHINE_NAMES[machine] ?? `unknown (${machine})`;
}

export interface ProgramHeader {
  type: number;
  offset: number;
  /** Addresses above 2^53 (kernel space) are rounded to the nearest double. */
  vaddr: number;
  filesz: number;
  memsz: number;
  /** PF_X=1, PF_W=2, PF_R=4. */
  flags: number;
}

export interface SectionHeader {
  /** Index in the section header table (sh_link/sh_info refer to these). */
  index: number;
  name: string;
  type: number;
  offset: number;
  size: number;
  /** Addresses above 2^53 (kernel space) are rounded to the nearest double. */
  addr: number;
  flags: number;
  link: number;
  info: number;
  entsize: number;
}

export interface DynamicEntry {
  tag: number;
  value: number;
}

export interface ElfFile {
  readonly label: string;
  readonly class: 32 | 64;
  readonly endian: 'little' | 'big';
  /** e_type: ET_REL=1, ET_EXEC=2, ET_DYN=3, ... */
  readonly type: number;
  /** 'REL', 'EXEC', 'DYN', 'CORE', 'NONE' or 'unknown (N)'. */
  readonly typeName: string;
  /** e_machine: EM_X86_64=62, EM_AARCH64=183, ... */
  readonly machine: number;
  /** 'x86-64', 'i386', 'aarch64', 'arm', 'riscv', 'ppc64', 's390', 'mips', ... or 'unknown (N)'. */
  readonly machineName: string;
  readonly entry: number;
  readonly programHeaders: readonly ProgramHeader[];
  /** All section headers, index 0 (the null section) included; empty when the file has none. */
  readonly sections: readonly SectionHeader[];
  /**
   * The bytes of the first section called `name` (a view into the parsed buffer), or undefined
   * when there is none. A NOBITS section (.bss) has no bytes in the file: an empty array.
   */
  section(name: string): Uint8Array | undefined;
  /** The PT_INTERP path (e.g. /lib64/ld-linux-x86-64.so.2), or undefined. */
  interpreter(): string | undefined;
  /** The dynamic table (PT_DYNAMIC, else the .dynamic section) up to DT_NULL; [] when none. */
  dynamic(): DynamicEntry[];
  /** The DT_NEEDED libraries, in order. */
  needed(): string[];
  /** No interpreter and no DT_NEEDED (a static-pie has PT_DYNAMIC but is static). */
  isStatic(): boolean;
}

/** A class- and endian-aware reader whose every access is bounds-checked. */
class Reader {
  private readonly view: DataView;
  constructor(
    readonly buf: Uint8Array,
    readonly label: string,
    readonly le: boolean,
    readonly is64: boolean,
  ) {
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }

  fail(msg: string): never {
    throw new DomuError(`${this.label}: ${msg}`);
  }

  /** Fails unless [off, off+len) lies inside the file. */
  check(off: number, len: number, what: string): void {
    if (!Number.isSafeInteger(off) || !Number.isSafeInteger(len) || off < 0 || len < 0 || off + len > this.buf.length) {
      this.fail(`truncated or corrupt ELF file: ${what} (offset ${off}, ${len} bytes) lies outside the file (${this.buf.length} bytes)`);
    }
  }

  u16(off: number): number {
    this.check(off, 2, 'read');
    return this.view.getUint16(off, this.le);
  }
  u32(off: number): number {
    this.check(off, 4, 'read');
    return this.view.getUint32(off, this.le);
  }
  u64(off: number): bigint {
    this.check(off, 8, 'read');
    return this.view.getBigUint64(off, this.le);
  }
  /** An address-sized value (4 or 8 bytes) as a number, possibly rounded above 2^53. */
  addr(off: number): number {
    return this.is64 ? Number(this.u64(off)) : this.u32(off);
  }
  /** An address-sized offset or size, which must be exact. */
  size(off: number, what: string): number {
    if (!this.is64) return this.u32(off);
    const v = this.u64(off);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`corrupt ELF file: ${what} is too large (${v})`);
    return Number(v);
  }

  bytes(off: number, len: number, what: string): Uint8Array {
    this.check(off, len, what);
    return this.buf.subarray(off, off + len);
  }

  /** The NUL-terminated string at `off`, which must end before `end`. */
  cstring(off: number, end: number, what: string): string {
    if (off >= end) this.fail(`corrupt ELF file: ${what} starts at ${off}, outside its string table`);
    this.check(off, Math.min(end, this.buf.length) - off, what);
    const nul = this.buf.subarray(off, end).indexOf(0);
    if (nul < 0) this.fail(`corrupt ELF file: ${what} is not NUL-terminated`);
    return utf8(this.buf.subarray(off, off + nul));
  }
}

const decoder = new TextDecoder('utf-8');
export function utf8(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

export function parseElf(buf: Uint8Array, label = 'file'): ElfFile {
  if (buf.length < 4 || buf[0] !== 0x7f || buf[1] !== 0x45 || buf[2] !== 0x4c || buf[3] !== 0x46) {
    throw new DomuError(`${label}: not an ELF file`);
  }
  if (buf.length < 16) throw new DomuError(`${label}: truncated ELF file (${buf.length} bytes, no complete ELF identification)`);
  const cls = buf[4];
  if (cls !== 1 && cls !== 2) throw new DomuError(`${label}: unsupported ELF class ${cls} (expected 1 for ELF32 or 2 for ELF64)`);
  const data = buf[5];
  if (data !== 1 && data !== 2) throw new DomuError(`${label}: unsupported ELF data encoding ${data} (expected 1 little-endian or 2 big-endian)`);
  if (buf[6] !== 1) throw new DomuError(`${label}: unsupported ELF version ${buf[6]}`);
  const is64 = cls === 2;
  const r: Reader = new Reader(buf, label, data === 1, is64);
  const ehsize = is64 ? 64 : 52;
  r.check(0, ehsize, 'ELF header');

  // e_ident (16) e_type e_machine e_version e_entry e_phoff e_shoff e_flags e_ehsize e_phentsize e_phnum e_shentsize e_shnum e_shstrndx
  const A = is64 ? 8 : 4;
  const type = r.u16(16);
  const machine = r.u16(18);
  const entry = r.addr(24);
  const phoff = r.size(24 + A, 'e_phoff');
  const shoff = r.size(24 + 2 * A, 'e_shoff');
  const h = 24 + 3 * A + 4; // after e_flags
  const phentsize = r.u16(h + 2);
  let phnum = r.u16(h + 4);
  const shentsize = r.u16(h + 6);
  let shnum = r.u16(h + 8);
  let shstrndx = r.u16(h + 10);

  // Section header table; its entry 0 carries the real counts when they do not fit in 16 bits.
  const shsize = is64 ? 64 : 40;
  const sectionAt = (i: number): Omit<SectionHeader, 'name'> & { nameOff: number } => {
    const o = shoff + i * shentsize;
    const what = `section header ${i}`;
    r.check(o, shsize, what);
    return {
      index: i,
      nameOff: r.u32(o),
      type: r.u32(o + 4),
      flags: r.addr(o + 8),
      addr: r.addr(o + 8 + A),
      offset: r.size(o + 8 + 2 * A, `${what} sh_offset`),
      size: r.size(o + 8 + 3 * A, `${what} sh_size`),
      link: r.u32(o + 8 + 4 * A),
      info: r.u32(o + 12 + 4 * A),
      entsize: r.size(o + 16 + 5 * A, `${what} sh_entsize`),
    };
  };
  if (shoff !== 0) {
    if (shentsize < shsize) r.fail(`corrupt ELF file: section header size ${shentsize} is smaller than ${shsize}`);
    if (shnum === 0 || shstrndx === SHN_XINDEX || phnum === PN_XNUM) {
      const s0 = sectionAt(0);
      if (shnum === 0) shnum = s0.size;
      if (shstrndx === SHN_XINDEX) shstrndx = s0.link;
      if (phnum === PN_XNUM) phnum = s0.info;
    }
  } else {
    shnum = 0;
  }
  r.check(shoff, shnum * shentsize, `section header table (${shnum} entries)`);

  // Program headers.
  const programHeaders: ProgramHeader[] = [];
  if (phnum > 0) {
    const phsize = is64 ? 56 : 32;
    if (phentsize < phsize) r.fail(`corrupt ELF file: program header size ${phentsize} is smaller than ${phsize}`);
    r.check(phoff, phnum * phentsize, `program header table (${phnum} entries)`);
    for (let i = 0; i < phnum; i++) {
      const o = phoff + i * phentsize;
      const what = `program header ${i}`;
      // ELF64: type flags offset vaddr paddr filesz memsz align; ELF32: type offset vaddr paddr filesz memsz flags align.
      const ph: ProgramHeader = is64
        ? { type: r.u32(o), flags: r.u32(o + 4), offset: r.size(o + 8, `${what} p_offset`), vaddr: r.addr(o + 16), filesz: r.size(o + 32, `${what} p_filesz`), memsz: r.size(o + 40, `${what} p_memsz`) }
        : { type: r.u32(o), offset: r.u32(o + 4), vaddr: r.u32(o + 8), filesz: r.u32(o + 16), memsz: r.u32(o + 20), flags: r.u32(o + 24) };
      if (ph.type !== PT_NULL) r.check(ph.offset, ph.filesz, `${what} contents`);
      programHeaders.push(ph);
    }
  }

  // Sections, named through the section header string table.
  const raw = Array.from({ length: shnum }, (_, i) => sectionAt(i));
  for (const s of raw) if (s.type !== SHT_NOBITS && s.type !== SHT_NULL) r.check(s.offset, s.size, `section ${s.index} contents`);
  let names: { start: number; end: number } | undefined;
  if (shnum > 0 && shstrndx !== SHN_UNDEF) {
    if (shstrndx >= shnum) {
      r.fail(`corrupt ELF file: section name table index ${shstrndx} is out of range (${shnum} sections)`);
    }
    const st = raw[shstrndx]!;
    if (st.type === SHT_NOBITS) r.fail(`corrupt ELF file: section name table ${shstrndx} has no contents`);
    names = { start: st.offset, end: st.offset + st.size };
  }
  const sections: SectionHeader[] = raw.map(({ nameOff, ...s }) => ({
    ...s,
    name: names && (s.index !== 0 || nameOff !== 0) ? r.cstring(names.start + nameOff, names.end, `name of section ${s.index}`) : '',
  }));

  const contents = (s: SectionHeader): Uint8Array => (s.type === SHT_NOBITS ? new Uint8Array(0) : r.bytes(s.offset, s.size, `section ${s.name}`));

  /** File offset of a virtual address, through the PT_LOAD segments. */
  const fileOffset = (vaddr: number): { offset: number; end: number } | undefined => {
    for (const p of programHeaders) {
      if (p.type === PT_LOAD && vaddr >= p.vaddr && vaddr < p.vaddr + p.filesz) {
        return { offset: p.offset + (vaddr - p.vaddr), end: p.offset + p.filesz };
      }
    }
    return undefined;
  };

  let dynamicCache: { entries: DynamicEntry[]; section: SectionHeader | undefined } | undefined;
  const readDynamic = (): { entries: DynamicEntry[]; section: SectionHeader | undefined } => {
    if (dynamicCache) return dynamicCache;
    const seg = programHeaders.find((p) => p.type === PT_DYNAMIC);
    const sec = seg ? undefined : sections.find((s) => s.type === SHT_DYNAMIC);
    const where = seg ? { offset: seg.offset, size: seg.filesz } : sec ? { offset: sec.offset, size: sec.size } : undefined;
    const entries: DynamicEntry[] = [];
    if (where) {
      const entsize = 2 * A;
      for (let o = where.offset; o + entsize <= where.offset + where.size; o += entsize) {
        const tag = r.addr(o);
        if (tag === DT_NULL) break;
        entries.push({ tag, value: r.addr(o + A) });
      }
    }
    dynamicCache = { entries, section: sec };
    return dynamicCache;
  };

  const needed = (): string[] => {
    const { entries, section: sec } = readDynamic();
    const wanted = entries.filter((e) => e.tag === DT_NEEDED);
    if (wanted.length === 0) return [];
    // The string table: DT_STRTAB mapped through PT_LOAD, else the .dynamic section's sh_link.
    let table: { start: number; end: number } | undefined;
    const strtab = entries.find((e) => e.tag === DT_STRTAB);
    const mapped = strtab ? fileOffset(strtab.value) : undefined;
    if (mapped) {
      const strsz = entries.find((e) => e.tag === DT_STRSZ)?.value;
      table = { start: mapped.offset, end: strsz === undefined ? mapped.end : Math.min(mapped.end, mapped.offset + strsz) };
    } else if (sec && sec.link > 0 && sec.link < sections.length) {
      const s = sections[sec.link]!;
      table = { start: s.offset, end: s.offset + s.size };
    }
    if (!table) r.fail('corrupt ELF file: DT_NEEDED entries but no dynamic string table (DT_STRTAB) in the file');
    const t = table;
    return wanted.map((e, i) => r.cstring(t.start + e.value, t.end, `DT_NEEDED entry ${i}`));
  };

  const interpreter = (): string | undefined => {
    const p = programHeaders.find((ph) => ph.type === PT_INTERP);
    if (!p) return undefined;
    const bytes = r.bytes(p.offset, p.filesz, 'PT_INTERP');
    const nul = bytes.indexOf(0);
    return utf8(nul < 0 ? bytes : bytes.subarray(0, nul));
  };

  return {
    label,
    class: is64 ? 64 : 32,
    endian: data === 1 ? 'little' : 'big',
    type,
    typeName: TYPE_NAMES[type] ?? `unknown (${type})`,
    machine,
    machineName: machineName(machine),
    entry,
    programHeaders,
    sections,
    section(name) {
      const s = sections.find((x) => x.name === name && x.type !== SHT_NULL);
      return s ? contents(s) : undefined;
    },
    interpreter,
    dynamic: () => readDynamic().entries.map((e) => ({ ...e })),
    needed,
    isStatic: () => interpreter() === undefined && needed().length === 0,
  };
}

export async function readElfFile(path: string): Promise<ElfFile> {
  let buf: Buffer;
  try {
    buf = await readFile(path);
  } catch (e) {
    throw new DomuError(`${path}: cannot read: ${errorMessage(e)}`, { cause: e });
  }
  return parseElf(buf, path);
}
