// readModinfo on gcc-built relocatable objects with and without a .modinfo section, plain and
// compressed (gzip through node:zlib, xz and zstd through the native programs), and on broken
// input: every failure must be a DomuError naming the file and saying what is wrong.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomuError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { moduleCompression, moduleNameOf, parseSoftdep, readModinfo } from '../../src/kernel/modinfo.js';
import { tempDir } from '../helpers/context.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };

const ENTRIES = [
  'license=GPL',
  'alias=fs-demo',
  'alias=demo:vif',
  'softdep=pre: crypto-crc32c other post: after1',
  'depends=jbd2,mbcache,crc16',
  'retpoline=Y',
  'intree=Y',
  'name=demo_mod',
  'vermagic=6.1.0-99-amd64 SMP preempt mod_unload modversions ',
];
const MODINFO_C = `static const char m[] __attribute__((section(".modinfo"), used)) = "${ENTRIES.map((e) => `${e}\\0`).join('')}";\n`;

let dir: string;
const p = (name: string) => join(dir, name);

beforeAll(async () => {
  dir = await tempDir('domu-modinfo-');
  await writeFile(p('demo.c'), MODINFO_C);
  await writeFile(p('plain.c'), 'int f(void) { return 1; }\n');
  await run(env, 'gcc', ['-c', 'demo.c', '-o', 'demo-mod.ko'], { cwd: dir });
  await run(env, 'gcc', ['-c', 'plain.c', '-o', 'plain.ko'], { cwd: dir });
  const ko = await readFile(p('demo-mod.ko'));
  await writeFile(p('demo-mod.ko.gz'), gzipSync(ko));
  await run(env, 'xz', ['-k', 'demo-mod.ko'], { cwd: dir });
  await run(env, 'zstd', ['-q', 'demo-mod.ko'], { cwd: dir });
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('readModinfo on a gcc-built object with a .modinfo section', () => {
  it('reads every field', async () => {
    const info = await readModinfo(p('demo-mod.ko'), env);
    expect(info).toMatchObject({
      file: p('demo-mod.ko'),
      name: 'demo_mod',
      depends: ['jbd2', 'mbcache', 'crc16'],
      softdepPre: ['crypto-crc32c', 'other'],
      softdepPost: ['after1'],
      vermagic: '6.1.0-99-amd64 SMP preempt mod_unload modversions ',
      release: '6.1.0-99-amd64',
      aliases: ['fs-demo', 'demo:vif'],
      license: 'GPL',
      intree: true,
    });
    expect(info.fields.retpoline).toEqual(['Y']);
    expect(info.fields.alias).toEqual(['fs-demo', 'demo:vif']);
  });

  it.each(['gz', 'xz', 'zst'])('reads the same fields from a .ko.%s copy', async (ext) => {
    const plain = await readModinfo(p('demo-mod.ko'), env);
    const packed = await readModinfo(p(`demo-mod.ko.${ext}`), env);
    expect({ ...packed, file: '' }).toEqual({ ...plain, file: '' });
  });

  it('falls back to the file name for the module name and treats empty depends as none', async () => {
    await writeFile(p('noname.c'), 'static const char m[] __attribute__((section(".modinfo"), used)) = "depends=\\0vermagic=6.1.0-1-amd64 SMP \\0";\n');
    await run(env, 'gcc', ['-c', 'noname.c', '-o', 'xen-net-front.ko'], { cwd: dir });
    const info = await readModinfo(p('xen-net-front.ko'), env);
    expect(info).toMatchObject({ name: 'xen_net_front', depends: [], softdepPre: [], softdepPost: [], aliases: [], release: '6.1.0-1-amd64', intree: false });
    expect(info.license).toBeUndefined();
  });
});

describe('readModinfo errors', () => {
  const fails = async (file: string, message: RegExp) => {
    const e: unknown = await readModinfo(file, env).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(DomuError);
    expect((e as Error).message).toMatch(message);
    expect((e as Error).message.startsWith(`${file}: `)).toBe(true);
  };

  it('a file that is not ELF', async () => {
    await writeFile(p('text.ko'), 'this is not a kernel module\n');
    await fails(p('text.ko'), /: not an ELF file$/);
  });

  it('an ELF object without .modinfo', async () => {
    await fails(p('plain.ko'), /: no \.modinfo section \(not a kernel module\?\)$/);
  });

  it.each([
    ['xz', 'xz'],
    ['zst', 'zstd'],
    ['gz', 'gzip'],
  ])('a truncated .ko.%s', async (ext, label) => {
    const whole = await readFile(p(`demo-mod.ko.${ext}`));
    await writeFile(p(`cut.ko.${ext}`), whole.subarray(0, Math.floor(whole.length / 2)));
    await fails(p(`cut.ko.${ext}`), new RegExp(`: truncated or corrupt ${label} data`));
  });

  it('garbage in a .ko.xz', async () => {
    await writeFile(p('junk.ko.xz'), 'not xz at all');
    await fails(p('junk.ko.xz'), /: truncated or corrupt xz data/);
  });

  it.each(['absent.ko', 'absent.ko.xz', 'absent.ko.zst', 'absent.ko.gz'])('a missing file %s', async (name) => {
    await fails(p(name), /: cannot read: /);
  });
});

describe('softdep and names', () => {
  it('parses pre: and post: lists', () => {
    expect(parseSoftdep(['pre: crypto-crc32c'])).toEqual({ pre: ['crypto-crc32c'], post: [] });
    expect(parseSoftdep(['pre: a b post: c'])).toEqual({ pre: ['a', 'b'], post: ['c'] });
    expect(parseSoftdep(['post: x', 'pre: y  z'])).toEqual({ pre: ['y', 'z'], post: ['x'] });
    expect(parseSoftdep(['pre:a post:b'])).toEqual({ pre: ['a'], post: ['b'] });
    expect(parseSoftdep(['stray pre: a'])).toEqual({ pre: ['a'], post: [] });
    expect(parseSoftdep([])).toEqual({ pre: [], post: [] });
  });

  it('derives names and compression from file names', () => {
    expect(moduleNameOf('/m/xen-netfront.ko.xz')).toBe('xen_netfront');
    expect(moduleNameOf('ext4.ko')).toBe('ext4');
    expect(moduleCompression('a.ko.zst')).toBe('zstd');
    expect(moduleCompression('a.ko.gz')).toBe('gzip');
    expect(moduleCompression('a.ko.xz')).toBe('xz');
    expect(moduleCompression('a.ko')).toBe('none');
  });
});
