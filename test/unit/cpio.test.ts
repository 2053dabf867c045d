// Our cpio newc writer against the real GNU cpio: what `cpio -t`/`-tv` list and what `cpio -idm`
// extracts (as root: device nodes too), plus a small independent parser of the records for the
// fields cpio(1) does not show (inode numbers, nlink, uid/gid, alignment), reproducibility and
// the refusal of bad names.
import { existsSync } from 'node:fs';
import { chmod, lstat, mkdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cpioArchive, writeCpioGzip, type CpioEntry } from '../../src/fs/cpio.js';
import { DomuError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { sha256 } from '../../src/core/hash.js';
import { memoryLogger } from '../../src/core/log.js';
import { tempDir } from '../helpers/context.js';
import { describeTree, diffTrees, type TreeEntry } from '../helpers/tree.js';

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
const MTIME = 1_700_000_000;
const isRoot = process.getuid?.() === 0;

let dir: string;
let toolSource: string;
const toolBytes = Buffer.from('#!/bin/sh\necho tool\n');

beforeAll(async () => {
  dir = await tempDir('domu-cpio-');
  toolSource = join(dir, 'tool-on-host');
  await writeFile(toolSource, toolBytes, { mode: 0o600 });
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Every kind of entry, given out of order, with parents missing (usr/share/doc). */
function sample(): CpioEntry[] {
  return [
    { type: 'symlink', path: 'bin/sh', target: 'tool' },
    { type: 'file', path: 'bin/tool', mode: 0o755, source: toolSource },
    { type: 'dir', path: 'bin' },
    { type: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    { type: 'char', path: 'dev/null', mode: 0o666, major: 1, minor: 3 },
    { type: 'block', path: 'dev/vda', mode: 0o660, major: 254, minor: 16 },
    { type: 'dir', path: 'dev' },
    { type: 'file', path: 'etc/hello.txt', data: Buffer.from('hello\n') },
    { type: 'file', path: 'etc/five', data: Buffer.from('12345') },
    { type: 'file', path: 'etc/four', data: Buffer.from('1234') },
    { type: 'file', path: 'etc/empty', data: Buffer.alloc(0) },
    { type: 'file', path: 'etc/setuid', mode: 0o4755, data: Buffer.from('s') },
    { type: 'symlink', path: 'etc/absolute', target: '/etc/hello.txt' },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'file', path: 'usr/share/doc/readme', data: Buffer.from('doc\n') },
    { type: 'dir', path: 'a-b' }, // sorts after "a" but must not come between a and a/x
    { type: 'file', path: 'a/x', data: Buffer.from('x') },
  ];
}

/** Names in archive order: by component, parents first. */
const EXPECTED_NAMES = [
  'a',
  'a/x',
  'a-b',
  'bin',
  'bin/sh',
  'bin/tool',
  'dev',
  'dev/console',
  'dev/null',
  'dev/vda',
  'etc',
  'etc/absolute',
  'etc/empty',
  'etc/five',
  'etc/four',
  'etc/hello.txt',
  'etc/setuid',
  'tmp',
  'usr',
  'usr/share',
  'usr/share/doc',
  'usr/share/doc/readme',
];

interface Rec {
  name: string;
  ino: number;
  mode: number;
  uid: number;
  gid: number;
  nlink: number;
  mtime: number;
  size: number;
  devmajor: number;
  devminor: number;
  rdevmajor: number;
  rdevminor: number;
  check: number;
  data: Buffer;
  /** Offset of the record in the archive. */
  offset: number;
}

/** An independent reading of newc records (not the writer's code). */
function parseNewc(buf: Buffer): Rec[] {
  const out: Rec[] = [];
  let off = 0;
  for (;;) {
    expect(off % 4, `record at ${off} is 4-aligned`).toBe(0);
    expect(buf.toString('latin1', off, off + 6)).toBe('070701');
    const f = (i: number) => parseInt(buf.toString('latin1', off + 6 + i * 8, off + 14 + i * 8), 16);
    const namesize = f(11);
    const nameEnd = off + 110 + namesize;
    expect(buf[nameEnd - 1], 'name is NUL-terminated').toBe(0);
    const name = buf.toString('utf8', off + 110, nameEnd - 1);
    const dataStart = nameEnd + ((4 - (nameEnd % 4)) % 4);
    const size = f(6);
    const rec: Rec = { name, ino: f(0), mode: f(1), uid: f(2), gid: f(3), nlink: f(4), mtime: f(5), size, devmajor: f(7), devminor: f(8), rdevmajor: f(9), rdevminor: f(10), check: f(12), data: buf.subarray(dataStart, dataStart + size), offset: off };
    for (const p of buf.subarray(nameEnd, dataStart)) expect(p, `${name}: name padding`).toBe(0);
    out.push(rec);
    const dataEnd = dataStart + size;
    const next = dataEnd + ((4 - (dataEnd % 4)) % 4);
    for (const p of buf.subarray(dataEnd, next)) expect(p, `${name}: data padding`).toBe(0);
    off = next;
    if (name === 'TRAILER!!!') break;
  }
  expect(off, 'nothing after the trailer').toBe(buf.length);
  return out;
}

describe('cpio newc writer', () => {
  let archive: Buffer;
  beforeAll(async () => {
    archive = await cpioArchive(sample(), { mtime: MTIME });
  });

  it('records: sequential inodes, uid/gid 0, one mtime, nlink 2 for dirs and 1 otherwise, trailer last', () => {
    const recs = parseNewc(archive);
    const trailer = recs.pop()!;
    expect(trailer).toMatchObject({ name: 'TRAILER!!!', ino: 0, mode: 0, size: 0, nlink: 1 });
    expect(recs.map((r) => r.name)).toEqual(EXPECTED_NAMES);
    recs.forEach((r, i) => {
      expect(r.ino, r.name).toBe(i + 1);
      expect([r.uid, r.gid, r.devmajor, r.devminor, r.check], r.name).toEqual([0, 0, 0, 0, 0]);
      expect(r.mtime, r.name).toBe(MTIME);
      expect(r.nlink, r.name).toBe((r.mode & 0o170000) === 0o040000 ? 2 : 1);
    });
    const byName = new Map(recs.map((r) => [r.name, r]));
    expect(byName.get('dev/console')).toMatchObject({ mode: 0o020600, rdevmajor: 5, rdevminor: 1, size: 0 });
    expect(byName.get('dev/vda')).toMatchObject({ mode: 0o060660, rdevmajor: 254, rdevminor: 16 });
    expect(byName.get('bin/sh')).toMatchObject({ mode: 0o120777 });
    expect(byName.get('bin/sh')!.data.toString()).toBe('tool'); // target, no NUL
    expect(byName.get('bin/tool')).toMatchObject({ mode: 0o100755, size: toolBytes.length }); // not the host's 0600
    expect(byName.get('usr/share')).toMatchObject({ mode: 0o040755 }); // added parent
    expect(byName.get('tmp')).toMatchObject({ mode: 0o041777 });
    expect(byName.get('etc/five')!.data.toString()).toBe('12345');
  });

  it('cpio -t lists exactly the expected names, in order', async () => {
    const r = await run(env, 'cpio', ['-t', '--quiet'], { input: archive });
    expect(r.stdout.split('\n')).toEqual(EXPECTED_NAMES);
  });

  it('cpio -tv shows the device numbers, link targets and root ownership', async () => {
    const r = await run(env, 'cpio', ['-tv', '--quiet'], { input: archive });
    const line = (name: string) => r.stdout.split('\n').find((l) => l.endsWith(` ${name}`) || l.includes(` ${name} -> `)) ?? '';
    expect(line('dev/console')).toMatch(/^crw------- +1 root +root +5, +1 /);
    expect(line('dev/null')).toMatch(/^crw-rw-rw- +1 root +root +1, +3 /);
    expect(line('dev/vda')).toMatch(/^brw-rw---- +1 root +root +254, +16 /);
    expect(line('bin/sh')).toMatch(/^lrwxrwxrwx .* bin\/sh -> tool$/);
    expect(line('etc/absolute')).toMatch(/ etc\/absolute -> \/etc\/hello\.txt$/);
    expect(line('etc/setuid')).toMatch(/^-rwsr-xr-x /);
    expect(line('tmp')).toMatch(/^drwxrwxrwt /);
  });

  it('cpio -idm extracts exactly the expected tree: types, modes, contents, link targets, mtimes', async () => {
    const into = join(dir, 'extract');
    await mkdir(into);
    await run(env, 'cpio', ['-i', '-d', '-m', '--quiet', '--no-absolute-filenames'], { input: archive, cwd: into });
    const file = (path: string, data: string | Buffer, mode = 0o644): TreeEntry => {
      const b = Buffer.from(data);
      return { path, type: 'file', mode, size: b.length, sha256: sha256(b), mtime: MTIME, nlink: 1 };
    };
    const d = (path: string, mode = 0o755): TreeEntry => ({ path, type: 'dir', mode, mtime: MTIME });
    const dev = (path: string, mode: number): TreeEntry => ({ path, type: 'other', mode, mtime: MTIME });
    const expected: TreeEntry[] = [
      d('a'),
      file('a/x', 'x'),
      d('a-b'),
      d('bin'),
      { path: 'bin/sh', type: 'symlink', mode: 0o777, target: 'tool', mtime: MTIME },
      file('bin/tool', toolBytes, 0o755),
      d('dev'),
      dev('dev/console', 0o600),
      dev('dev/null', 0o666),
      dev('dev/vda', 0o660),
      d('etc'),
      { path: 'etc/absolute', type: 'symlink', mode: 0o777, target: '/etc/hello.txt', mtime: MTIME },
      file('etc/empty', ''),
      file('etc/five', '12345'),
      file('etc/four', '1234'),
      file('etc/hello.txt', 'hello\n'),
      file('etc/setuid', 's', 0o4755),
      d('tmp', 0o1777),
      d('usr'),
      d('usr/share'),
      d('usr/share/doc'),
      file('usr/share/doc/readme', 'doc\n'),
    ];
    const got = await describeTree(into, { mtimes: true });
    // Device nodes are made only as root; as another user cpio cannot mknod them.
    const want = isRoot ? expected : expected.filter((e) => e.type !== 'other');
    // Not compared (the records' mtimes are checked above): symlinks, as GNU cpio does not set
    // their times, and directories with entries, as creating those entries updates them again.
    const hasChildren = (p: string) => want.some((e) => e.path.startsWith(`${p}/`));
    const strip = (t: TreeEntry[]) => t.map((e) => (e.type === 'symlink' || (e.type === 'dir' && hasChildren(e.path)) ? { ...e, mtime: MTIME } : e));
    expect(diffTrees(strip(got), strip(want))).toEqual([]);
    if (isRoot) {
      for (const [name, major, minor, char] of [['console', 5, 1, true], ['null', 1, 3, true], ['vda', 254, 16, false]] as const) {
        const st = await lstat(join(into, 'dev', name));
        expect(char ? st.isCharacterDevice() : st.isBlockDevice(), name).toBe(true);
        expect([(st.rdev >> 8) & 0xfff, (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)], name).toEqual([major, minor]);
        expect([st.uid, st.gid], name).toEqual([0, 0]);
      }
    }
  });
});

describe('reproducibility', () => {
  it('two generations are byte-identical, the gzip header has no time or name, and entry order does not matter', async () => {
    const a = join(dir, 'a.cpio.gz');
    const b = join(dir, 'b.cpio.gz');
    const first = await writeCpioGzip(a, sample(), { mtime: MTIME });
    // Different host metadata of the source file must not show: its mode and times change.
    await chmod(toolSource, 0o777);
    await utimes(toolSource, new Date(2001, 0, 1), new Date(2002, 0, 1));
    const second = await writeCpioGzip(b, [...sample()].reverse(), { mtime: MTIME });
    const [x, y] = [await readFile(a), await readFile(b)];
    expect(sha256(x)).toBe(sha256(y));
    expect(first).toEqual(second);
    expect(first.entries).toBe(EXPECTED_NAMES.length);
    // gzip: magic, deflate, no flags (so no FNAME), MTIME 0.
    expect([...x.subarray(0, 4)]).toEqual([0x1f, 0x8b, 8, 0]);
    expect(x.readUInt32LE(4)).toBe(0);
    const plain = gunzipSync(x);
    expect(plain.length).toBe(first.uncompressed);
    expect(plain.equals(await cpioArchive(sample(), { mtime: MTIME }))).toBe(true);
  });

  it('a different mtime changes every record and nothing else', async () => {
    const one = parseNewc(await cpioArchive(sample(), { mtime: MTIME }));
    const two = parseNewc(await cpioArchive(sample(), { mtime: 86400 }));
    expect(two.slice(0, -1).every((r) => r.mtime === 86400)).toBe(true);
    expect(two.map((r) => ({ ...r, mtime: 0 }))).toEqual(one.map((r) => ({ ...r, mtime: 0 })));
  });
});

describe('bad entries', () => {
  const fails = async (entries: CpioEntry[], message: RegExp) => {
    const e: unknown = await cpioArchive(entries, { mtime: MTIME }).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(DomuError);
    expect((e as Error).message).toMatch(message);
    expect((e as Error).message.split('\n')).toHaveLength(1);
  };
  const f = (path: string): CpioEntry => ({ type: 'file', path, data: Buffer.from('x') });

  it.each([
    ['', /"": empty name/],
    ['/etc/passwd', /"\/etc\/passwd": absolute name/],
    ['..', /"\.\.": "\.\." component/],
    ['a/../../b', /"a\/\.\.\/\.\.\/b": "\.\." component/],
    ['./a', /"\.\/a": "\." component/],
    ['a//b', /"a\/\/b": empty component/],
    ['a/', /"a\/": empty component/],
    ['a\0b', /NUL in the name/],
    ['TRAILER!!!', /reserved name/],
  ])('refuses the name %j', async (name, message) => {
    await fails([f(name)], message);
  });

  it('refuses a path listed twice, a file used as a directory, bad modes, devices and mtimes', async () => {
    await fails([f('etc/x'), { type: 'dir', path: 'etc/x' }], /"etc\/x": listed twice/);
    await fails([f('etc'), f('etc/x')], /"etc\/x": its parent etc is a file, not a directory/);
    await fails([{ type: 'file', path: 'x', mode: 0o10000, data: Buffer.alloc(0) }], /"x": mode 010000 is not a permission mode/);
    await fails([{ type: 'char', path: 'c', major: -1, minor: 0 }], /"c": major -1 is not an integer/);
    await fails([{ type: 'symlink', path: 'l', target: '' }], /"l": symlink target is empty/);
    const e: unknown = await cpioArchive([f('x')], { mtime: -5 }).then(() => undefined, (x: unknown) => x);
    expect((e as Error).message).toMatch(/mtime -5 is not an integer/);
  });

  it('a bad name fails before the output file is created', async () => {
    const out = join(dir, 'never.cpio.gz');
    await expect(writeCpioGzip(out, [f('ok'), f('../escape')], { mtime: MTIME })).rejects.toThrow(/"\.\.\/escape"/);
    expect(existsSync(out)).toBe(false);
  });

  it('a source that is missing or not a regular file is named', async () => {
    await expect(cpioArchive([{ type: 'file', path: 'x', source: join(dir, 'missing') }], { mtime: MTIME })).rejects.toThrow(/cpio entry x: cannot read .*missing/);
    await expect(cpioArchive([{ type: 'file', path: 'x', source: dir }], { mtime: MTIME })).rejects.toThrow(/cpio entry x: .* is not a regular file/);
  });
});
