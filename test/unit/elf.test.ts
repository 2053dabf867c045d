// The ELF reader, on real binaries built here with gcc (dynamic, static, static-pie, a relocatable
// object with a .modinfo section; 32-bit ones too when gcc -m32 can build freestanding code),
// cross-checked against readelf, and on synthetic ELF32/ELF64 little-/big-endian images laid out
// by a tiny writer below. Truncated and corrupted files must give a DomuError naming the file.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomuError } from '../../src/core/errors.js';
import { run, which, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import {
  DT_NEEDED,
  DT_STRSZ,
  DT_STRTAB,
  ET_DYN,
  ET_EXEC,
  ET_REL,
  parseElf,
  PT_DYNAMIC,
  PT_INTERP,
  PT_LOAD,
  readElfFile,
  SHT_DYNAMIC,
  SHT_NOBITS,
  SHT_PROGBITS,
  SHT_STRTAB,
  type ElfFile,
} from '../../src/kernel/elf.js';
import { modinfoFields, parseModinfo } from '../../src/kernel/modinfo.js';
import { tempDir, mulberry32 } from '../helpers/context.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

const HELLO = '#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n';
const MODINFO_C = 'static const char m[] __attribute__((section(".modinfo"), used)) = "license=GPL\\0alias=a\\0alias=b\\0name=x_y\\0";\n';
const MODINFO_ENTRIES = [
  { key: 'license', value: 'GPL' },
  { key: 'alias', value: 'a' },
  { key: 'alias', value: 'b' },
  { key: 'name', value: 'x_y' },
];

let dir: string;
const bin = (name: string) => join(dir, name);
let haveReadelf = false;
/** Whether gcc -m32 could build the freestanding 32-bit objects (no 32-bit libc needed). */
let m32 = false;

beforeAll(async () => {
  dir = await tempDir('domu-elf-');
  haveReadelf = (await which('readelf')) !== undefined;
  await writeFile(bin('hello.c'), HELLO);
  await writeFile(bin('modinfo.c'), MODINFO_C);
  await run(env, 'gcc', ['-O1', 'hello.c', '-o', 'hello-dyn'], { cwd: dir });
  await run(env, 'gcc', ['-O1', '-static', 'hello.c', '-o', 'hello-static'], { cwd: dir });
  await run(env, 'gcc', ['-O1', '-static-pie', 'hello.c', '-o', 'hello-static-pie'], { cwd: dir });
  await run(env, 'gcc', ['-c', 'modinfo.c', '-o', 'modinfo.o'], { cwd: dir });
  // 32-bit: freestanding code only, so this works without a 32-bit libc (multilib) when the
  // compiler and linker can target i386. A libfoo.so of our own gives a real DT_NEEDED.
  await writeFile(bin('foo.c'), 'int foo(void) { return 42; }\n');
  await writeFile(bin('start.c'), 'int foo(void);\nvoid _start(void) { volatile int x = foo(); (void)x; for (;;) {} }\n');
  try {
    await run(env, 'gcc', ['-m32', '-c', 'modinfo.c', '-o', 'modinfo32.o'], { cwd: dir });
    await run(env, 'gcc', ['-m32', '-nostdlib', '-shared', '-fPIC', 'foo.c', '-o', 'libfoo.so'], { cwd: dir });
    await run(env, 'gcc', ['-m32', '-nostdlib', '-ffreestanding', 'start.c', '-L.', '-lfoo', '-Wl,--dynamic-linker=/lib/ld-linux.so.2', '-o', 'dyn32'], { cwd: dir });
    await run(env, 'gcc', ['-m32', '-nostdlib', '-ffreestanding', '-static', 'start.c', 'foo.c', '-o', 'static32'], { cwd: dir });
    m32 = true;
  } catch {
    m32 = false;
  }
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// readelf, to cross-check against (binutils comes with gcc).

async function readelf(args: string[], file: string): Promise<string> {
  return (await run(env, 'readelf', ['-W', ...args, file], { quiet: true, env: { LC_ALL: 'C' } })).stdout;
}

async function readelfNeeded(file: string): Promise<string[]> {
  return [...(await readelf(['-d'], file)).matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]!);
}

async function readelfInterp(file: string): Promise<string | undefined> {
  return /\[Requesting program interpreter: ([^\]]+)\]/.exec(await readelf(['-l'], file))?.[1];
}

/** [name, offset, size] of sections 1.. as readelf -S shows them. */
async function readelfSections(file: string): Promise<[string, number, number][]> {
  const out: [string, number, number][] = [];
  for (const line of (await readelf(['-S'], file)).split('\n')) {
    const m = /^\s*\[\s*(\d+)\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)\s/.exec(line);
    if (m && m[1] !== '0') out.push([m[2]!, parseInt(m[3]!, 16), parseInt(m[4]!, 16)]);
  }
  return out;
}

/** [offset, vaddr, filesz, memsz] of the program headers as readelf -l shows them. */
async function readelfSegments(file: string): Promise<number[][]> {
  const out: number[][] = [];
  for (const line of (await readelf(['-l'], file)).split('\n')) {
    const m = /^\s+[A-Z][A-Z_+0-9a-fx]*\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s/.exec(line);
    if (m) out.push([1, 2, 3, 4].map((i) => parseInt(m[i]!, 16)));
  }
  return out;
}

async function crossCheck(file: string, elf: ElfFile): Promise<void> {
  if (!haveReadelf) return;
  expect(elf.needed()).toEqual(await readelfNeeded(file));
  expect(elf.interpreter()).toBe(await readelfInterp(file));
  expect(elf.sections.slice(1).map((s) => [s.name, s.offset, s.size])).toEqual(await readelfSections(file));
  expect(elf.programHeaders.map((p) => [p.offset, p.vaddr, p.filesz, p.memsz])).toEqual(await readelfSegments(file));
}

// ---------------------------------------------------------------------------------------------
// A tiny ELF writer: header, PT_INTERP + PT_LOAD + PT_DYNAMIC, .interp, .dynstr, .dynamic,
// .shstrtab, .modinfo, .bss (NOBITS) and the section header table.

interface SynthOptions {
  class: 32 | 64;
  endian: 'little' | 'big';
  machine: number;
  /** Use extended numbering: e_shnum = 0 and e_shstrndx = SHN_XINDEX, real values in section 0. */
  xindex?: boolean;
}

const SYNTH_INTERP = '/lib/ld-test.so.1';
const SYNTH_NEEDED = ['libfoo.so.1', 'libbar.so'];
const SYNTH_MODINFO = 'license=GPL\0\0\0alias=a\0alias=b\0name=x_y\0\0\0';

function buildElf(o: SynthOptions) {
  const is64 = o.class === 64;
  const A = is64 ? 8 : 4;
  const le = o.endian === 'little';
  const ehsize = is64 ? 64 : 52;
  const phentsize = is64 ? 56 : 32;
  const shentsize = is64 ? 64 : 40;
  const base = is64 ? 0x5_5555_0000_0000 : 0x0804_8000;
  const enc = new TextEncoder();
  const align = (n: number, a: number) => Math.ceil(n / a) * a;

  const interp = enc.encode(`${SYNTH_INTERP}\0`);
  const dynstr = enc.encode(`\0${SYNTH_NEEDED.join('\0')}\0`);
  const modinfo = enc.encode(SYNTH_MODINFO);
  const names = ['', '.interp', '.dynstr', '.dynamic', '.shstrtab', '.modinfo', '.bss'];
  const nameOff: number[] = [];
  let shstrText = '';
  for (const n of names) {
    nameOff.push(n === '' ? 0 : shstrText.length);
    if (n !== '' || shstrText === '') shstrText += `${n}\0`;
  }
  const shstr = enc.encode(shstrText);

  let off = ehsize;
  const phoff = off;
  off += 3 * phentsize;
  const interpOff = off;
  off += interp.length;
  const dynstrOff = off;
  off += dynstr.length;
  off = align(off, A);
  const dynOff = off;
  const dyn: [number, number][] = [
    [DT_NEEDED, 1],
    [DT_NEEDED, 1 + SYNTH_NEEDED[0]!.length + 1],
    [DT_STRTAB, base + dynstrOff],
    [DT_STRSZ, dynstr.length],
    [0, 0],
  ];
  off += dyn.length * 2 * A;
  const shstrOff = off;
  off += shstr.length;
  const modOff = off;
  off += modinfo.length;
  off = align(off, 8);
  const shoff = off;
  off += names.length * shentsize;
  const total = off;

  const buf = new Uint8Array(total);
  const v = new DataView(buf.buffer);
  const u16 = (at: number, x: number) => v.setUint16(at, x, le);
  const u32 = (at: number, x: number) => v.setUint32(at, x, le);
  const addr = (at: number, x: number) => (is64 ? v.setBigUint64(at, BigInt(x), le) : v.setUint32(at, x, le));

  // ELF header.
  buf.set([0x7f, 0x45, 0x4c, 0x46, is64 ? 2 : 1, le ? 1 : 2, 1]);
  const entry = base + 0x100;
  u16(16, ET_EXEC);
  u16(18, o.machine);
  u32(20, 1);
  addr(24, entry);
  addr(24 + A, phoff);
  addr(24 + 2 * A, shoff);
  const h = 24 + 3 * A + 4;
  u16(h, ehsize);
  u16(h + 2, phentsize);
  u16(h + 4, 3);
  u16(h + 6, shentsize);
  u16(h + 8, o.xindex ? 0 : names.length);
  u16(h + 10, o.xindex ? 0xffff : 4);

  // Program headers.
  const programHeaders = [
    { type: PT_INTERP, offset: interpOff, vaddr: base + interpOff, filesz: interp.length, memsz: interp.length, flags: 4 },
    { type: PT_LOAD, offset: 0, vaddr: base, filesz: total, memsz: total + 0x1000, flags: 5 },
    { type: PT_DYNAMIC, offset: dynOff, vaddr: base + dynOff, filesz: dyn.length * 2 * A, memsz: dyn.length * 2 * A, flags: 6 },
  ];
  programHeaders.forEach((p, i) => {
    const at = phoff + i * phentsize;
    u32(at, p.type);
    if (is64) {
      u32(at + 4, p.flags);
      addr(at + 8, p.offset);
      addr(at + 16, p.vaddr);
      addr(at + 24, p.vaddr);
      addr(at + 32, p.filesz);
      addr(at + 40, p.memsz);
      addr(at + 48, 8);
    } else {
      u32(at + 4, p.offset);
      u32(at + 8, p.vaddr);
      u32(at + 12, p.vaddr);
      u32(at + 16, p.filesz);
      u32(at + 20, p.memsz);
      u32(at + 24, p.flags);
      u32(at + 28, 4);
    }
  });

  buf.set(interp, interpOff);
  buf.set(dynstr, dynstrOff);
  dyn.forEach(([tag, val], i) => {
    addr(dynOff + i * 2 * A, tag);
    addr(dynOff + i * 2 * A + A, val);
  });
  buf.set(shstr, shstrOff);
  buf.set(modinfo, modOff);

  // Section headers.
  const sections = [
    { type: 0, offset: 0, size: o.xindex ? names.length : 0, addr: 0, flags: 0, link: o.xindex ? 4 : 0, info: 0, entsize: 0 },
    { type: SHT_PROGBITS, offset: interpOff, size: interp.length, addr: base + interpOff, flags: 2, link: 0, info: 0, entsize: 0 },
    { type: SHT_STRTAB, offset: dynstrOff, size: dynstr.length, addr: base + dynstrOff, flags: 2, link: 0, info: 0, entsize: 0 },
    { type: SHT_DYNAMIC, offset: dynOff, size: dyn.length * 2 * A, addr: base + dynOff, flags: 3, link: 2, info: 0, entsize: 2 * A },
    { type: SHT_STRTAB, offset: shstrOff, size: shstr.length, addr: 0, flags: 0, link: 0, info: 0, entsize: 0 },
    { type: SHT_PROGBITS, offset: modOff, size: modinfo.length, addr: 0, flags: 2, link: 0, info: 0, entsize: 0 },
    { type: SHT_NOBITS, offset: total, size: 0x1000, addr: base + total, flags: 3, link: 0, info: 0, entsize: 0 },
  ].map((s, index) => ({ index, name: names[index]!, ...s }));
  sections.forEach((s, i) => {
    const at = shoff + i * shentsize;
    u32(at, nameOff[i]!);
    u32(at + 4, s.type);
    addr(at + 8, s.flags);
    addr(at + 8 + A, s.addr);
    addr(at + 8 + 2 * A, s.offset);
    addr(at + 8 + 3 * A, s.size);
    u32(at + 8 + 4 * A, s.link);
    u32(at + 12 + 4 * A, s.info);
    addr(at + 16 + 4 * A, 1);
    addr(at + 16 + 5 * A, s.entsize);
  });

  return { bytes: buf, entry, programHeaders, sections, dynstrVaddr: base + dynstrOff, dynstrSize: dynstr.length };
}

// ---------------------------------------------------------------------------------------------

/** Every accessor, so that lazily read parts (dynamic table, strings) are exercised too. */
function touchAll(elf: ElfFile): void {
  elf.interpreter();
  elf.dynamic();
  elf.needed();
  elf.isStatic();
  for (const s of elf.sections) elf.section(s.name);
}

/** Parse and use `bytes`; anything thrown must be a DomuError whose message names the label. */
function expectCleanFailureOrSuccess(bytes: Uint8Array, label: string): void {
  try {
    touchAll(parseElf(bytes, label));
  } catch (e) {
    if (!(e instanceof DomuError)) throw new Error(`not a DomuError for ${label}: ${String(e)}`, { cause: e });
    expect(e.message.startsWith(`${label}: `)).toBe(true);
  }
}


describe('parseElf on real x86-64 binaries', () => {
  it('a dynamic hello: interpreter, libc.so.6, not static', async () => {
    const elf = await readElfFile(bin('hello-dyn'));
    expect(elf.class).toBe(64);
    expect(elf.endian).toBe('little');
    expect(elf.machine).toBe(62);
    expect(elf.machineName).toBe('x86-64');
    expect([ET_EXEC, ET_DYN]).toContain(elf.type);
    expect(elf.interpreter()).toBe('/lib64/ld-linux-x86-64.so.2');
    expect(elf.needed()).toContain('libc.so.6');
    expect(elf.isStatic()).toBe(false);
    expect(new TextDecoder().decode(elf.section('.interp'))).toBe('/lib64/ld-linux-x86-64.so.2\0');
    expect(elf.section('.no-such-section')).toBeUndefined();
    expect(elf.section('.bss')).toEqual(new Uint8Array(0));
    await crossCheck(bin('hello-dyn'), elf);
  });

  it('gcc -static: static, no interpreter, no DT_NEEDED', async () => {
    const elf = await readElfFile(bin('hello-static'));
    expect(elf.type).toBe(ET_EXEC);
    expect(elf.typeName).toBe('EXEC');
    expect(elf.interpreter()).toBeUndefined();
    expect(elf.needed()).toEqual([]);
    expect(elf.isStatic()).toBe(true);
    await crossCheck(bin('hello-static'), elf);
  });

  it('gcc -static-pie: PT_DYNAMIC but no DT_NEEDED, so static', async () => {
    const elf = await readElfFile(bin('hello-static-pie'));
    expect(elf.type).toBe(ET_DYN);
    expect(elf.programHeaders.some((p) => p.type === PT_DYNAMIC)).toBe(true);
    expect(elf.dynamic().length).toBeGreaterThan(0);
    expect(elf.interpreter()).toBeUndefined();
    expect(elf.needed()).toEqual([]);
    expect(elf.isStatic()).toBe(true);
    await crossCheck(bin('hello-static-pie'), elf);
  });

  it('/bin/ls: dynamic, its DT_NEEDED as readelf lists them', async () => {
    const elf = await readElfFile('/bin/ls');
    expect(elf.isStatic()).toBe(false);
    expect(elf.needed()).toContain('libc.so.6');
    expect(elf.needed().length).toBeGreaterThanOrEqual(1);
    if (haveReadelf) expect(new Set(elf.needed())).toEqual(new Set(await readelfNeeded('/bin/ls')));
    await crossCheck('/bin/ls', elf);
  });

  it('a relocatable object with a .modinfo section', async () => {
    const elf = await readElfFile(bin('modinfo.o'));
    expect(elf.type).toBe(ET_REL);
    expect(elf.typeName).toBe('REL');
    expect(elf.programHeaders).toEqual([]);
    expect(elf.sections.map((s) => s.name)).toContain('.modinfo');
    const entries = parseModinfo(elf.section('.modinfo')!);
    expect(entries).toEqual(MODINFO_ENTRIES);
    expect(modinfoFields(entries)).toEqual({ license: ['GPL'], alias: ['a', 'b'], name: ['x_y'] });
    await crossCheck(bin('modinfo.o'), elf);
  });
});

describe('parseElf on real i386 binaries (gcc -m32, freestanding)', () => {
  it('a 32-bit object, a dynamic and a static executable', async (ctx) => {
    if (!m32) return ctx.skip();
    const obj = await readElfFile(bin('modinfo32.o'));
    expect([obj.class, obj.endian, obj.type, obj.machine, obj.machineName]).toEqual([32, 'little', ET_REL, 3, 'i386']);
    expect(parseModinfo(obj.section('.modinfo')!)).toEqual(MODINFO_ENTRIES);
    await crossCheck(bin('modinfo32.o'), obj);

    const dyn = await readElfFile(bin('dyn32'));
    expect(dyn.class).toBe(32);
    expect(dyn.interpreter()).toBe('/lib/ld-linux.so.2');
    expect(dyn.needed()).toEqual(['libfoo.so']);
    expect(dyn.isStatic()).toBe(false);
    await crossCheck(bin('dyn32'), dyn);

    const st = await readElfFile(bin('static32'));
    expect(st.class).toBe(32);
    expect(st.isStatic()).toBe(true);
    await crossCheck(bin('static32'), st);
  });
});

describe('parseElf on synthetic images', () => {
  const cases: (SynthOptions & { name: string })[] = [
    { class: 32, endian: 'little', machine: 3, name: 'i386' },
    { class: 32, endian: 'big', machine: 8, name: 'mips' },
    { class: 64, endian: 'big', machine: 22, name: 's390' },
    { class: 64, endian: 'little', machine: 183, name: 'aarch64' },
    { class: 32, endian: 'big', machine: 40, name: 'arm', xindex: true },
    { class: 64, endian: 'little', machine: 243, name: 'riscv', xindex: true },
  ];
  for (const c of cases) {
    it(`ELF${c.class} ${c.endian}-endian ${c.name}${c.xindex ? ' (extended section numbering)' : ''}: every field round-trips`, () => {
      const img = buildElf(c);
      const elf = parseElf(img.bytes, 'synthetic');
      expect(elf.label).toBe('synthetic');
      expect(elf.class).toBe(c.class);
      expect(elf.endian).toBe(c.endian);
      expect(elf.type).toBe(ET_EXEC);
      expect(elf.typeName).toBe('EXEC');
      expect(elf.machine).toBe(c.machine);
      expect(elf.machineName).toBe(c.name);
      expect(elf.entry).toBe(img.entry);
      expect(elf.programHeaders).toEqual(img.programHeaders);
      expect(elf.sections).toEqual(img.sections);
      expect(elf.interpreter()).toBe(SYNTH_INTERP);
      expect(elf.dynamic()).toEqual([
        { tag: DT_NEEDED, value: 1 },
        { tag: DT_NEEDED, value: 1 + SYNTH_NEEDED[0]!.length + 1 },
        { tag: DT_STRTAB, value: img.dynstrVaddr },
        { tag: DT_STRSZ, value: img.dynstrSize },
      ]);
      expect(elf.needed()).toEqual(SYNTH_NEEDED);
      expect(elf.isStatic()).toBe(false);
      expect(elf.section('.bss')).toEqual(new Uint8Array(0));
      const entries = parseModinfo(elf.section('.modinfo')!);
      expect(entries).toEqual(MODINFO_ENTRIES);
    });
  }

  it('every truncation of a synthetic image fails cleanly', () => {
    for (const c of cases) {
      const { bytes } = buildElf(c);
      for (let n = 0; n < bytes.length; n++) {
        const cut = bytes.subarray(0, n);
        expect(() => parseElf(cut, 'cut.elf')).toThrow(/^cut\.elf: /);
        expectCleanFailureOrSuccess(cut, 'cut.elf');
      }
    }
  });

  it('random corruption of synthetic images never escapes as anything but a DomuError', () => {
    const rand = mulberry32(42);
    for (const c of cases) {
      const { bytes } = buildElf(c);
      for (let round = 0; round < 400; round++) {
        const bad = bytes.slice();
        const flips = 1 + Math.floor(rand() * 4);
        for (let i = 0; i < flips; i++) bad[Math.floor(rand() * bad.length)] = Math.floor(rand() * 256);
        expectCleanFailureOrSuccess(bad, 'fuzz.elf');
      }
    }
  });
});

describe('parseModinfo', () => {
  it('skips padding NULs, keeps repeated keys and = in values', () => {
    const data = new TextEncoder().encode('\0\0parm=debug:int\0\0\0parm=x:a=b\0vermagic=6.1.0 SMP\0noequals\0');
    const entries = parseModinfo(data);
    expect(entries).toEqual([
      { key: 'parm', value: 'debug:int' },
      { key: 'parm', value: 'x:a=b' },
      { key: 'vermagic', value: '6.1.0 SMP' },
      { key: 'noequals', value: '' },
    ]);
    expect(modinfoFields(entries)).toEqual({ parm: ['debug:int', 'x:a=b'], vermagic: ['6.1.0 SMP'], noequals: [''] });
    expect(parseModinfo(new Uint8Array(0))).toEqual([]);
  });
});

describe('errors', () => {
  it('a text file is not an ELF file', async () => {
    const path = bin('hello.c');
    await expect(readElfFile(path)).rejects.toThrow(new DomuError(`${path}: not an ELF file`));
    await expect(readElfFile(path)).rejects.toBeInstanceOf(DomuError);
    expect(() => parseElf(new Uint8Array(0))).toThrow('file: not an ELF file');
  });

  it('a missing file gives a DomuError naming it', async () => {
    const path = bin('no-such-file');
    await expect(readElfFile(path)).rejects.toThrow(`${path}: cannot read`);
  });

  it('bad class, data encoding and version are named', () => {
    const { bytes } = buildElf({ class: 64, endian: 'little', machine: 62 });
    const patched = (at: number, value: number) => {
      const b = bytes.slice();
      b[at] = value;
      return b;
    };
    expect(() => parseElf(patched(4, 3), 'x')).toThrow('x: unsupported ELF class 3');
    expect(() => parseElf(patched(5, 0), 'x')).toThrow('x: unsupported ELF data encoding 0');
    expect(() => parseElf(patched(6, 2), 'x')).toThrow('x: unsupported ELF version 2');
  });

  it('the static binary cut to 100 bytes and to half gives a clear error naming the file', async () => {
    const full = await readFile(bin('hello-static'));
    for (const n of [100, Math.floor(full.length / 2)]) {
      const path = bin(`hello-static.cut${n}`);
      await writeFile(path, full.subarray(0, n));
      const err = await readElfFile(path).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(DomuError);
      expect((err as Error).message).toMatch(new RegExp(`^${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: truncated or corrupt ELF file`));
    }
  });

  it('truncations and corruptions of the real dynamic binary fail cleanly', async () => {
    const full = new Uint8Array(await readFile(bin('hello-dyn')));
    for (let n = 0; n < full.length; n += 97) expectCleanFailureOrSuccess(full.subarray(0, n), 'cut');
    const rand = mulberry32(7);
    const elf = parseElf(full, 'ok');
    // Corrupt the header, the program headers and the section header table, where it matters most.
    const shoff = elf.sections.length ? full.length - elf.sections.length * 64 : 64;
    for (let round = 0; round < 300; round++) {
      const bad = full.slice();
      for (let i = 0; i < 3; i++) {
        const at = rand() < 0.5 ? Math.floor(rand() * (64 + elf.programHeaders.length * 56)) : shoff + Math.floor(rand() * (full.length - shoff));
        bad[at] = Math.floor(rand() * 256);
      }
      expectCleanFailureOrSuccess(bad, 'fuzz');
    }
  });
});
