// The hostile-input catalogue: archives, build descriptions, kconfig fragments, kernel module
// trees and shared stores crafted to escape, inject or confuse, each given to the real `domu` CLI
// (a child process, real files, real tools: tar, bzip2, xz, objcopy, loop and bind mounts).
// Every case states its exit code and its one-line error; every run must show no stack trace and
// must leave nothing created or changed where it must not (--out, marker files, files outside
// the store, the cache). Each row goes to docs/reliability.md (area "hostile input").
import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { chmod, copyFile, lstat, mkdir, readdir, readFile, readlink, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { execa } from 'execa';
import { pack, type Header } from 'tar-stream';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { LOCK_NAME } from '../../src/store/storelock.js';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import { domu, domuBin, type CliResult } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { reliability } from './reliability.js';

const isRoot = process.getuid?.() === 0;

let root: string;
let kernel: KernelPackage;

beforeAll(async () => {
  root = await tempDir('domu-hostile-');
  // The kernel package for the modules and store cases; the busybox tarball so that a make
  // injection that got past the plan would really reach make (source and tree are cached there).
  [kernel] = await Promise.all([getKernelPackage(), getBusyboxTarball()]);
}, 600_000);

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Checking one run

interface Failure {
  code: number;
  /** The error's message: the text after `domu <command>: error: `. */
  message: string;
  /** Every `domu …: error:` line. */
  errorLines: string[];
  /** The lines after the error line (hint, log). */
  after: string[];
}

function inspect(r: CliResult, command: string): Failure {
  const lines = r.stderr.split('\n');
  const prefix = `domu ${command}: error: `;
  const errorLines = lines.filter((l) => /^domu [a-z]+: error: /.test(l));
  const at = lines.findIndex((l) => l.startsWith(prefix));
  return {
    code: r.exitCode,
    message: at < 0 ? `(no error line) ${lines.filter(Boolean).slice(-2).join(' / ')}` : lines[at]!.slice(prefix.length),
    errorLines,
    after: at < 0 ? [] : lines.slice(at + 1).filter((l) => l !== ''),
  };
}

/** Paths of this run replaced by stable names, so the table reads the same on every machine. */
function stable(text: string): string {
  let t = text;
  if (root) t = t.split(root).join('<tmp>');
  t = t.split(TEST_CACHE_DIR).join('<cache>');
  t = t.replace(/gave up after \d+(?:\.\d+)? s/g, 'gave up after N s'); // a time: the same words every run
  return t.length > 400 ? `${t.slice(0, 397)}...` : t;
}

/** The run failed with `code` and exactly one one-line error matching `re`; no stack trace. */
function expectCleanFailure(r: CliResult, command: string, code: number, re: RegExp): Failure {
  const f = inspect(r, command);
  const all = `${r.stdout}\n${r.stderr}`;
  expect(f.errorLines, r.stderr).toHaveLength(1);
  expect(f.errorLines[0]!.startsWith(`domu ${command}: error: `), r.stderr).toBe(true);
  expect(f.message, r.stderr).toMatch(re);
  // One line: only a hint and the log's path may follow it.
  for (const l of f.after) expect(l, r.stderr).toMatch(/^(?: {2}hint: |log: )/);
  expect(all).not.toMatch(/^\s+at /m);
  expect(all).not.toMatch(/internal error|this is a bug/i);
  expect(r.exitCode, r.stderr).toBe(code);
  return f;
}

async function exists(p: string): Promise<boolean> {
  return lstat(p).then(
    () => true,
    () => false,
  );
}

/**
 * Every file (not directory) under `dir`, relative; [] when it does not exist. `--out` must hold
 * none after a refused run: the run may create the directory itself (it takes its lock,
 * out/.domu.lock, there), but nothing may be left in it.
 */
async function filesIn(dir: string, prefix = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(dir, prefix), { withFileTypes: true }).catch(() => [])) {
    const rel = prefix ? `${prefix}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...(await filesIn(dir, rel)));
    else out.push(rel);
  }
  return out.sort();
}

/** Names in `dir` (sorted), without lost+found; [] when it does not exist. */
async function names(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).filter((n) => n !== 'lost+found').sort();
}

const sha256 = (b: Uint8Array | string) => createHash('sha256').update(b).digest('hex');

// ---------------------------------------------------------------------------------------------
// The table

interface Prepared {
  args: string[];
  /** How to run it (default: the CLI as is; e.g. under `prlimit`). */
  run?: (args: string[]) => Promise<CliResult>;
  /** After the run: assert that nothing was created or changed where it must not; returns what was checked. */
  after?: (r: CliResult) => Promise<string | undefined>;
}

interface Case {
  /** Short test title. */
  title: string;
  /** For docs/reliability.md: what was given, in a Xen admin's words. */
  case: string;
  expected: string;
  command: 'build' | 'configs' | 'modules';
  exit: number;
  error: RegExp;
  prepare: (dir: string) => Promise<Prepared>;
}

/** A directory name from a case's title (stable, so the table reads the same on every run). */
const slug = (title: string) => title.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');

async function runCase(task: Parameters<typeof reliability>[0], c: Case): Promise<void> {
  const r = reliability(task, { area: 'hostile input', case: c.case, expected: c.expected });
  const dir = join(root, slug(c.title));
  await mkdir(dir, { recursive: true });
  const p = await c.prepare(dir);
  const res = await (p.run ?? ((a: string[]) => domu(a)))(p.args);
  const f = inspect(res, c.command);
  r.observe(`exit ${f.code}: ${stable(f.message)}`);
  expectCleanFailure(res, c.command, c.exit, c.error);
  const checked = await p.after?.(res);
  if (checked) r.observe(checked);
}

// ---------------------------------------------------------------------------------------------
// 1. Archives: busybox tarballs given with --source and --sha256, stopped after extract

type Item = Partial<Header> & { name: string; body?: string | Buffer };

function tarBuffer(items: Item[]): Promise<Buffer> {
  const p = pack();
  for (const { body, ...h } of items) {
    const header = { mtime: new Date('2022-01-01T00:00:00Z'), uid: 0, gid: 0, mode: 0o644, ...h } as Header;
    if (body !== undefined) p.entry(header, body);
    else p.entry(header);
  }
  p.finalize();
  return new Promise((res, rej) => {
    const chunks: Buffer[] = [];
    p.on('data', (c: unknown) => chunks.push(c as Buffer));
    p.on('end', () => res(Buffer.concat(chunks)));
    p.on('error', rej);
  });
}

const TOP = 'busybox-9.9.9';
const top = (extra: Item[]): Item[] => [{ name: `${TOP}/`, type: 'directory', mode: 0o755 }, { name: `${TOP}/Makefile`, body: 'all:\n' }, ...extra];

/** A tar header's size field changed to `size` (octal), with its checksum recomputed. */
function setHeaderSize(tar: Buffer, headerAt: number, size: number): void {
  tar.write(`${size.toString(8).padStart(11, '0')}\0`, headerAt + 124, 12, 'latin1');
  tar.fill(0x20, headerAt + 148, headerAt + 156);
  let sum = 0;
  for (let i = headerAt; i < headerAt + 512; i++) sum += tar[i]!;
  tar.write(`${sum.toString(8).padStart(6, '0')}\0 `, headerAt + 148, 8, 'latin1');
}

/** Offset of the header of the entry `name` in an uncompressed tar. */
function headerOffset(tar: Buffer, name: string): number {
  for (let at = 0; at + 512 <= tar.length; at += 512) {
    if (tar.toString('latin1', at, at + 100).replace(/\0.*$/s, '') === name) return at;
  }
  throw new Error(`no header ${name}`);
}

/**
 * `domu build --source <archive> --sha256 <its hash> --until extract` with a private cache and
 * --out; afterwards no tree may be in the cache, no temporary left, --out absent, and every
 * `outside` path absent.
 */
function archiveCase(opts: { archive: (dir: string) => Promise<Buffer>; file?: string; sha256?: string; outside?: (dir: string) => string[] }) {
  return async (dir: string): Promise<Prepared> => {
    const bytes = await opts.archive(dir);
    const file = join(dir, opts.file ?? 'busybox-9.9.9.tar.gz');
    await writeFile(file, bytes);
    const cache = join(dir, 'cache');
    const out = join(dir, 'out');
    const outside = opts.outside?.(dir) ?? [];
    return {
      args: ['build', '--source', file, '--sha256', opts.sha256 ?? sha256(bytes), '--busybox-version', '9.9.9', '--until', 'extract', '--cache-dir', cache, '--out', out],
      after: async () => {
        expect(await names(join(cache, 'trees')), 'no tree in the cache').toEqual([]);
        expect(await filesIn(out), '--out holds nothing').toEqual([]);
        for (const p of outside) expect(await exists(p), `${p} was not created`).toBe(false);
        expect(sha256(await readFile(file)), 'the given archive is unchanged').toBe(sha256(bytes));
        return `no tree cached, nothing in --out${outside.length ? ', nothing written outside' : ''}`;
      },
    };
  };
}

const gz = async (items: Item[]) => gzipSync(await tarBuffer(items));

async function bz2(dir: string, tar: Buffer): Promise<Buffer> {
  const plain = join(dir, 'plain.tar');
  await writeFile(plain, tar);
  await execa('bzip2', ['-f', plain]);
  const out = await readFile(`${plain}.bz2`);
  await rm(`${plain}.bz2`);
  return out;
}

const archiveCases: Case[] = [
  {
    title: 'archive: ../ path traversal',
    case: 'busybox tarball (--source) with a member "busybox-9.9.9/../../escaped" that climbs out of the tree',
    expected: 'exit 2, the member named and refused; nothing written outside, no tree cached',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "busybox-9\.9\.9\/\.\.\/\.\.\/escaped": "\.\." in path$/,
    prepare: archiveCase({ archive: async () => gz(top([{ name: `${TOP}/../../escaped`, body: 'pwned\n' }])), outside: (d) => [join(d, 'escaped'), join(d, 'cache', 'escaped')] }),
  },
  {
    title: 'archive: absolute member path',
    case: 'busybox tarball with an absolute member path (/<tmp>/pwned-absolute)',
    expected: 'exit 2, "absolute path" refused; the absolute path is not created',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "\/.*\/pwned-absolute": absolute path$/,
    prepare: (dir) => archiveCase({ archive: async () => gz(top([{ name: join(dir, 'pwned-absolute'), body: 'pwned\n' }])), outside: () => [join(dir, 'pwned-absolute')] })(dir),
  },
  {
    title: 'archive: symlink out of the tree, then a file through it',
    case: 'busybox tarball with a symlink "evil -> ../../outside" followed by a file "evil/pwned" written through it',
    expected: 'exit 2, the symlink refused ("leaves the tree") before anything is written through it',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "busybox-9\.9\.9\/evil": symlink target "\.\.\/\.\.\/outside" leaves the tree$/,
    prepare: archiveCase({
      archive: async () => gz(top([{ name: `${TOP}/evil`, type: 'symlink', linkname: '../../outside' }, { name: `${TOP}/evil/pwned`, body: 'pwned\n' }])),
      outside: (d) => [join(d, 'outside')],
    }),
  },
  {
    title: 'archive: symlink inside the tree, then a file through it',
    case: 'busybox tarball with a symlink "lnk -> ." (inside the tree) and then "lnk/Makefile" written through the symlink',
    expected: 'exit 2, refused: a path may not pass through an extracted symlink',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "busybox-9\.9\.9\/lnk\/Makefile": path passes through the symlink "lnk"$/,
    prepare: archiveCase({ archive: async () => gz(top([{ name: `${TOP}/lnk`, type: 'symlink', linkname: '.' }, { name: `${TOP}/lnk/Makefile`, body: 'overwritten\n' }])) }),
  },
  {
    title: 'archive: hard link to a file outside',
    case: 'busybox tarball with a hard link member pointing at /etc/passwd',
    expected: 'exit 2, the hard link refused ("leaves the tree"); /etc/passwd untouched',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "busybox-9\.9\.9\/passwd": hardlink target "\/etc\/passwd" leaves the tree$/,
    prepare: async (dir) => {
      const before = sha256(await readFile('/etc/passwd'));
      const p = await archiveCase({ archive: async () => gz(top([{ name: `${TOP}/passwd`, type: 'link', linkname: '/etc/passwd' }])) })(dir);
      return {
        ...p,
        after: async (r) => {
          const note = await p.after!(r);
          expect(sha256(await readFile('/etc/passwd'))).toBe(before);
          return `${note}; /etc/passwd unchanged`;
        },
      };
    },
  },
  {
    title: 'archive: character device member',
    case: 'busybox tarball with a character device node (like /dev/mem, 1:1)',
    expected: 'exit 2, device entries refused; no node created',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "busybox-9\.9\.9\/mem": character-device entries are not allowed$/,
    prepare: archiveCase({ archive: async () => gz(top([{ name: `${TOP}/mem`, type: 'character-device', devmajor: 1, devminor: 1, mode: 0o666 }])) }),
  },
  {
    title: 'archive: FIFO member',
    case: 'busybox tarball with a FIFO (named pipe) member',
    expected: 'exit 2, FIFO entries refused',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: refusing entry "busybox-9\.9\.9\/pipe": FIFO entries are not allowed$/,
    prepare: archiveCase({ archive: async () => gz(top([{ name: `${TOP}/pipe`, type: 'fifo' }])) }),
  },
  {
    title: 'archive: member bigger than its header says',
    case: 'busybox tarball whose member holds 1536 bytes while its header declares 512 (the rest is read as a bogus header)',
    expected: 'exit 2, "corrupt tar data"; no tree cached',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: corrupt tar data \(.+\)$/,
    prepare: archiveCase({
      archive: async () => {
        const tar = await tarBuffer(top([{ name: `${TOP}/big`, body: Buffer.alloc(1536, 0x41) }, { name: `${TOP}/after`, body: 'x\n' }]));
        setHeaderSize(tar, headerOffset(tar, `${TOP}/big`), 512);
        return gzipSync(tar);
      },
    }),
  },
  {
    title: 'archive: member cut short (header declares more than the archive holds)',
    case: 'busybox tarball that ends inside a member whose header declares 1 MiB',
    expected: 'exit 2, "truncated tar data"; no partial tree cached',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.gz: truncated tar data$/,
    prepare: archiveCase({
      archive: async () => {
        const tar = await tarBuffer(top([{ name: `${TOP}/huge`, body: Buffer.alloc(4096, 0x42) }]));
        const at = headerOffset(tar, `${TOP}/huge`);
        setHeaderSize(tar, at, 1 << 20);
        return gzipSync(tar.subarray(0, at + 512 + 4096));
      },
    }),
  },
  {
    title: 'archive: truncated .tar.bz2',
    case: 'busybox .tar.bz2 cut in half (a broken download), given with its own sha256',
    expected: 'exit 2, "truncated or corrupt bzip2 data"; the bzip2 child is gone, no tree cached',
    command: 'build',
    exit: 2,
    error: /^\/.*\/busybox-9\.9\.9\.tar\.bz2: truncated or corrupt bzip2 data$/,
    prepare: archiveCase({
      file: 'busybox-9.9.9.tar.bz2',
      archive: async (dir) => {
        const body = Buffer.from(Array.from({ length: 200_000 }, (_, i) => (i * 7919) % 251));
        const whole = await bz2(dir, await tarBuffer(top([{ name: `${TOP}/data`, body }])));
        return whole.subarray(0, whole.length >> 1);
      },
    }),
  },
  {
    title: 'archive: --source is a device',
    case: '--source /dev/zero (not a tarball but an endless device)',
    expected: 'exit 2 at once: --source is not a regular file',
    command: 'build',
    exit: 2,
    error: /^--source \/dev\/zero: not a regular file$/,
    prepare: async (dir) => {
      const p = await archiveCase({ archive: async () => gz(top([])) })(dir);
      return { ...p, args: p.args.map((a) => (a.endsWith('busybox-9.9.9.tar.gz') ? '/dev/zero' : a)) };
    },
  },
  {
    title: 'archive: sha256 mismatch',
    case: 'a good busybox tarball given with --sha256 of other content',
    expected: 'exit 1, "sha256 mismatch" naming both hashes; the copy in the cache deleted, the given file left as it was',
    command: 'build',
    exit: 1,
    error: /^sha256 mismatch for \/.*\/busybox-9\.9\.9\.tar\.gz: expected 0{63}1, got [0-9a-f]{64}; nothing of it was kept in the cache$/,
    prepare: async (dir) => {
      const p = await archiveCase({ archive: async () => gz(top([])), sha256: `${'0'.repeat(63)}1` })(dir);
      return {
        ...p,
        after: async (r) => {
          const note = await p.after!(r);
          const sources = join(dir, 'cache', 'sources');
          expect((await names(sources)).filter((n) => !n.endsWith('.json')), 'nothing kept under sources/').toEqual([]);
          return `${note}; nothing kept in the cache`;
        },
      };
    },
  },
];

// ---------------------------------------------------------------------------------------------
// 2. Build descriptions and flags (refused while planning: nothing runs)

/** `domu configs --config <yaml> [extra]`; --out must stay absent. */
function describeCase(yaml: string | undefined, extra: string[] = [], command: 'configs' | 'build' = 'configs') {
  return async (dir: string): Promise<Prepared> => {
    const out = join(dir, 'out');
    const args: string[] = [command];
    if (yaml !== undefined) {
      await writeFile(join(dir, 'guest.yaml'), yaml);
      args.push('--config', join(dir, 'guest.yaml'));
    }
    args.push('--out', out, '--cache-dir', join(dir, 'cache'), ...extra);
    return {
      args,
      after: async () => {
        expect(await filesIn(out), '--out holds nothing').toEqual([]);
        expect(await exists(join(dir, 'cache')), 'no run started').toBe(false);
        return 'refused while planning: no stage ran, nothing in --out';
      },
    };
  };
}

const descriptionCases: Case[] = [
  {
    title: 'description: memory "lots"',
    case: 'guest.yaml with memory: "lots"',
    expected: 'exit 2, file:line:col and guest.memory named, expected an integer number of MiB',
    command: 'configs',
    exit: 2,
    error: /^\/.*guest\.yaml:2:11: guest\.memory: expected an integer number of MiB, got "lots"$/,
    prepare: describeCase('guest:\n  memory: "lots"\n'),
  },
  {
    title: 'description: --config /dev/zero',
    case: '--config /dev/zero (a "file" that never ends; reading it used to hang the CLI)',
    expected: 'exit 2 at once: larger than 1 MiB (or never ends), no build description',
    command: 'configs',
    exit: 2,
    error: /^cannot read build description \/dev\/zero: it is larger than 1 MiB \(or never ends\), which no build description is$/,
    prepare: async (dir) => {
      const p = await describeCase(undefined)(dir);
      return { ...p, args: [...p.args, '--config', '/dev/zero'] };
    },
  },
  {
    title: 'description: YAML alias bomb',
    case: 'guest.yaml built from nested YAML aliases ("billion laughs": a few lines expanding to a million items)',
    expected: 'exit 2 at once: the YAML is refused as a resource exhaustion attack',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml: cannot read the YAML: Excessive alias count indicates a resource exhaustion attack$/,
    prepare: describeCase(
      [
        'a: &a [x, x, x, x, x, x, x, x, x, x]',
        ...['b', 'c', 'd', 'e', 'f'].map((k, i) => `${k}: &${k} [${Array(10).fill(`*${'abcdef'[i]}`).join(', ')}]`),
        `g: [${Array(10).fill('*f').join(', ')}]`,
        '',
      ].join('\n'),
    ),
  },
  {
    title: 'description: vcpus as a list',
    case: 'guest.yaml with vcpus: [1] (a list instead of a number)',
    expected: 'exit 2, guest.vcpus: expected an integer from 1 to 128, got a list',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:10: guest\.vcpus: expected an integer from 1 to 128, got a list$/,
    prepare: describeCase('guest:\n  vcpus: [1]\n'),
  },
  {
    title: 'description: vcpus 0',
    case: '--set guest.vcpus=0',
    expected: 'exit 2, the flag named, expected 1 to 128',
    command: 'configs',
    exit: 2,
    error: /^flag --set guest\.vcpus=0: guest\.vcpus: expected an integer from 1 to 128, got 0$/,
    prepare: describeCase(undefined, ['--set', 'guest.vcpus=0']),
  },
  {
    title: 'description: vcpus 1000',
    case: 'guest.yaml with vcpus: 1000',
    expected: 'exit 2, expected 1 to 128, got 1000',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:10: guest\.vcpus: expected an integer from 1 to 128, got 1000$/,
    prepare: describeCase('guest:\n  vcpus: 1000\n'),
  },
  {
    title: 'description: memory 8 MiB',
    case: 'guest.yaml with memory: 8 (below the 16 MiB minimum)',
    expected: 'exit 2, expected at least 16 MiB, got 8',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:11: guest\.memory: expected at least 16 MiB, got 8$/,
    prepare: describeCase('guest:\n  memory: 8\n'),
  },
  {
    title: 'description: image size 1K',
    case: '--set image.size=1K (a 1 KiB disk image)',
    expected: 'exit 2, expected at least 16 MiB, the bytes shown',
    command: 'configs',
    exit: 2,
    error: /^flag --set image\.size=1K: image\.size: expected at least 16M, got "1K" \(1024 bytes\)$/,
    prepare: describeCase(undefined, ['--set', 'image.size=1K']),
  },
  {
    title: 'description: unknown key',
    case: 'guest.yaml with a misspelt key guest.memroy',
    expected: 'exit 2, unknown key named with the allowed keys and "did you mean memory"',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:3: guest\.memroy: unknown key "memroy" in guest \(allowed: .*\); did you mean "memory"\?$/,
    prepare: describeCase('guest:\n  memroy: 512\n'),
  },
  {
    title: 'description: duplicate host names',
    case: 'two hosts both named test1',
    expected: 'exit 2, hosts.1.name: duplicate host name, the first one named',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:\d+:\d+: hosts\.1\.name: duplicate host name "test1" \(already hosts\.0\.name\)$/,
    prepare: describeCase('hosts:\n  - { name: test1, address: 10.0.0.1, bridge: xenbr0 }\n  - { name: test1, address: 10.0.0.2, bridge: xenbr0 }\n'),
  },
  {
    title: 'description: guest name with / and ..',
    case: 'guest.name "../../etc/passwd" (would become the config file name under xen/<host>/)',
    expected: 'exit 2, guest.name: expected a guest name [a-z0-9_.-]; no file written',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:9: guest\.name: expected a guest name of up to 64 characters \[a-z0-9_\.-\], starting with a letter or digit, got "\.\.\/\.\.\/etc\/passwd"$/,
    prepare: describeCase('guest:\n  name: ../../etc/passwd\n'),
  },
  {
    title: 'description: guest name ".."',
    case: '--set guest.name=.. (a name that is a parent directory)',
    expected: 'exit 2, guest.name refused',
    command: 'configs',
    exit: 2,
    error: /^flag --set guest\.name=\.\.: guest\.name: expected a guest name .*, got "\.\."$/,
    prepare: describeCase(undefined, ['--set', 'guest.name=..']),
  },
  {
    title: 'description: image file name with ../',
    case: 'image.file "../../root/.ssh/authorized_keys" (would be published outside the store)',
    expected: 'exit 2, image.file: a plain file name (no /)',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:9: image\.file: expected a plain file name like busybox\.img \(no \/\), got "\.\.\/\.\.\/root\/\.ssh\/authorized_keys"$/,
    prepare: describeCase('image:\n  file: ../../root/.ssh/authorized_keys\n'),
  },
  {
    title: 'description: host name with ../',
    case: 'hosts.0.name "../../tmp/x" (would become the directory xen/<host>/)',
    expected: 'exit 2, hosts.0.name: expected a host name [a-z0-9-]',
    command: 'configs',
    exit: 2,
    error: /^flag --set hosts\.0\.name=\.\.\/\.\.\/tmp\/x: hosts\.0\.name: expected a host name \[a-z0-9-\], starting with a letter or digit, got "\.\.\/\.\.\/tmp\/x"$/,
    prepare: describeCase(undefined, ['--set', 'hosts.0.name=../../tmp/x']),
  },
  {
    title: 'xen config injection: bridge with a quote',
    case: `--set 'hosts.0.bridge=xenbr0" , extra="init=/bin/sh' (closing the vif string to add an xl key)`,
    expected: 'exit 2, hosts.0.bridge: a bridge name of 1 to 15 characters [A-Za-z0-9_.-]; no config written',
    command: 'configs',
    exit: 2,
    error: /^flag --set hosts\.0\.bridge=xenbr0" , extra="init=\/bin\/sh: hosts\.0\.bridge: expected a bridge name of 1 to 15 characters \[A-Za-z0-9_\.-\], got "xenbr0\\" , extra=\\"init=\/bin\/sh"$/,
    prepare: describeCase(undefined, ['--set', 'hosts.0.bridge=xenbr0" , extra="init=/bin/sh']),
  },
  {
    title: 'xen config injection: newline in the kernel command line',
    case: 'guest.extra "quiet\\nkernel = \'/tmp/evil\'" (a newline starting a new xl line)',
    expected: 'exit 2, guest.extra: no quotes, backslashes, # or control characters',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:10: guest\.extra: expected kernel command line text \(no quotes, backslashes, # or control characters\), got "quiet\\nkernel = '\/tmp\/evil'"$/,
    prepare: describeCase(`guest:\n  extra: "quiet\\nkernel = '/tmp/evil'"\n`),
  },
  {
    title: "xen config injection: single quote in root",
    case: "guest.root \"/dev/xvda' ]\" (a single quote closing the xl disk/extra string)",
    expected: 'exit 2, guest.root refused',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:9: guest\.root: expected a root device and options, e\.g\. "\/dev\/xvda ro" \(no quotes, backslashes, # or control characters\), got "\/dev\/xvda' \]"$/,
    prepare: describeCase(`guest:\n  root: "/dev/xvda' ]"\n`),
  },
  {
    title: 'xen config injection: # in the kernel command line',
    case: 'guest.extra "init=/bin/sh # rest ignored" (a # would comment out the rest of the config line)',
    expected: 'exit 2, guest.extra refused',
    command: 'configs',
    exit: 2,
    error: /^flag --set guest\.extra=.*: guest\.extra: expected kernel command line text \(no quotes, backslashes, # or control characters\), got "init=\/bin\/sh # rest ignored"$/,
    prepare: describeCase(undefined, ['--set', 'guest.extra="init=/bin/sh # rest ignored"']),
  },
  {
    title: 'xen config injection: quote in the store path',
    case: 'store.path "/scsistore\\" disk=x" (a quote in the path written into every config)',
    expected: 'exit 2, store.path refused',
    command: 'configs',
    exit: 2,
    error: /guest\.yaml:2:9: store\.path: expected an absolute path like \/scsistore, got "\/scsistore\\" disk=x"$/,
    prepare: describeCase('store:\n  path: \'/scsistore" disk=x\'\n'),
  },
  {
    title: 'make injection: busybox version with ;',
    case: "--busybox-version '1.35.0; touch <tmp>/pwned' (the version goes into file names and make's directory)",
    expected: 'exit 2, busybox.version: expected a release like 1.35.0; the marker file is not created',
    command: 'build',
    exit: 2,
    error: /^flag --busybox-version 1\.35\.0; touch .*: busybox\.version: expected a busybox release like 1\.35\.0, got "1\.35\.0; touch .*"$/,
    prepare: async (dir) => {
      const p = await describeCase(undefined, ['--busybox-version', `1.35.0; touch ${join(dir, 'pwned')}`, '--until', 'kconfig'], 'build')(dir);
      return markerChecked(p, join(dir, 'pwned'));
    },
  },
  {
    title: 'make injection: cross_compile with $(...)',
    case: 'busybox.cross_compile "$(touch <tmp>/pwned)-" (passed to make as CROSS_COMPILE)',
    expected: 'exit 2, busybox.cross_compile: a toolchain prefix ending in "-"; the marker file is not created',
    command: 'build',
    exit: 2,
    error: /guest\.yaml:2:18: busybox\.cross_compile: expected a toolchain prefix ending in "-", like aarch64-linux-gnu-, got "\$\(touch .*\)-"$/,
    prepare: async (dir) => markerChecked(await describeCase(`busybox:\n  cross_compile: "$(touch ${join(dir, 'pwned')})-"\n`, ['--until', 'kconfig'], 'build')(dir), join(dir, 'pwned')),
  },
  {
    title: 'flag injection: --jobs with ;',
    case: "--jobs '4; touch <tmp>/pwned' (passed to make as -j)",
    expected: 'exit 2, --jobs: expected a positive whole number',
    command: 'build',
    exit: 2,
    error: /^--jobs 4; touch .*: expected a positive whole number$/,
    prepare: async (dir) => markerChecked(await describeCase(undefined, ['--jobs', `4; touch ${join(dir, 'pwned')}`, '--until', 'kconfig'], 'build')(dir), join(dir, 'pwned')),
  },
  {
    title: 'flag: --out is a regular file',
    case: '--out naming an existing regular file (not a directory)',
    expected: 'exit 2, "--out … is not a directory"; the file is left as it was',
    command: 'configs',
    exit: 2,
    error: /^--out \/.*\/a-file is not a directory$/,
    prepare: async (dir) => {
      const file = join(dir, 'a-file');
      await writeFile(file, 'mine\n');
      return {
        args: ['configs', '--out', file, '--cache-dir', join(dir, 'cache')],
        after: async () => {
          expect(await readFile(file, 'utf8'), 'the file is unchanged').toBe('mine\n');
          return 'the file is unchanged';
        },
      };
    },
  },
  {
    title: 'description: a file:// mirror',
    case: 'busybox.mirrors [file:///etc] (a mirror that reads local files)',
    expected: 'exit 2, busybox.mirrors.0: expected an http(s) base URL',
    command: 'build',
    exit: 2,
    error: /guest\.yaml:2:13: busybox\.mirrors\.0: expected an http\(s\) base URL like https:\/\/busybox\.net\/downloads, got "file:\/\/\/etc"$/,
    prepare: describeCase('busybox:\n  mirrors: [file:///etc]\n', ['--until', 'source'], 'build'),
  },
];

/** `p` with an extra check: the marker file an injection would create does not exist. */
function markerChecked(p: Prepared, marker: string): Prepared {
  return {
    ...p,
    after: async (r) => {
      const note = await p.after?.(r);
      expect(await exists(marker), `${marker} must not exist`).toBe(false);
      return `${note ? `${note}; ` : ''}marker file not created`;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// 2b. kconfig fragments and .config files (busybox's make reads .config as make syntax)

/**
 * `domu build --until kconfig` on the shared test cache (busybox 1.35.0's source and tree are
 * there, so an injection that got past the plan would really run `make defconfig/oldconfig`),
 * with the fragment (or full .config) `text`; the marker must not appear.
 */
function kconfigCase(text: (marker: string) => string, key: 'fragment' | 'config' = 'fragment') {
  return async (dir: string): Promise<Prepared> => {
    const marker = join(dir, 'pwned');
    const file = join(dir, key === 'fragment' ? 'evil.fragment' : 'evil.config');
    await writeFile(file, text(marker));
    await writeFile(join(dir, 'guest.yaml'), `busybox:\n  ${key}: ${file}\n`);
    const out = join(dir, 'out');
    return {
      args: ['build', '--config', join(dir, 'guest.yaml'), '--busybox-version', '1.35.0', '--until', 'kconfig', '--cache-dir', TEST_CACHE_DIR, '--out', out],
      after: async () => {
        expect(await exists(marker), 'the injected command did not run').toBe(false);
        expect(await filesIn(out), '--out holds nothing').toEqual([]);
        return 'refused while planning (make never ran); marker file not created, nothing in --out';
      },
    };
  };
}

const kconfigCases: Case[] = [
  {
    title: 'kconfig injection: $(shell ...) in CONFIG_EXTRA_CFLAGS',
    case: 'fragment line CONFIG_EXTRA_CFLAGS="$(shell touch <tmp>/pwned)" (make expands it even inside the quotes)',
    expected: 'exit 2, the fragment line named and refused before make runs; marker file not created',
    command: 'build',
    exit: 2,
    error: /evil\.fragment:2: CONFIG_EXTRA_CFLAGS: "\$\(shell touch .*\/pwned\)" contains a \$: busybox's Makefile reads \.config, so make would expand \$\(…\) and the shell would run `…`; refusing it$/,
    prepare: kconfigCase((m) => `CONFIG_STATIC=y\nCONFIG_EXTRA_CFLAGS="$(shell touch ${m})"\n`),
  },
  {
    title: 'kconfig injection: backquotes in CONFIG_CROSS_COMPILER_PREFIX',
    case: 'fragment line CONFIG_CROSS_COMPILER_PREFIX="`touch <tmp>/pwned`" (busybox greps it into CROSS_COMPILE even for make oldconfig)',
    expected: 'exit 2, refused before make runs; marker file not created',
    command: 'build',
    exit: 2,
    error: /evil\.fragment:1: CONFIG_CROSS_COMPILER_PREFIX: "`touch .*\/pwned`" contains a backquote: busybox's Makefile reads \.config/,
    prepare: kconfigCase((m) => `CONFIG_CROSS_COMPILER_PREFIX="\`touch ${m}\`"\n`),
  },
  {
    title: 'kconfig injection: ; in CONFIG_EXTRA_LDFLAGS',
    case: 'fragment line CONFIG_EXTRA_LDFLAGS="-static; touch <tmp>/pwned" (pasted unquoted into the link command)',
    expected: 'exit 2, ";" named: make puts the value unquoted into shell command lines; marker file not created',
    command: 'build',
    exit: 2,
    error: /evil\.fragment:1: CONFIG_EXTRA_LDFLAGS: "-static; touch .*\/pwned" contains ";": make puts CONFIG_EXTRA_LDFLAGS unquoted into shell command lines, where it would start another command; refusing it$/,
    prepare: kconfigCase((m) => `CONFIG_EXTRA_LDFLAGS="-static; touch ${m}"\n`),
  },
  {
    title: 'kconfig injection: | in CONFIG_EXTRA_LDLIBS',
    case: 'fragment line CONFIG_EXTRA_LDLIBS="m | touch <tmp>/pwned"',
    expected: 'exit 2, "|" named; marker file not created',
    command: 'build',
    exit: 2,
    error: /evil\.fragment:1: CONFIG_EXTRA_LDLIBS: "m \| touch .*\/pwned" contains "\|": make puts CONFIG_EXTRA_LDLIBS unquoted/,
    prepare: kconfigCase((m) => `CONFIG_EXTRA_LDLIBS="m | touch ${m}"\n`),
  },
  {
    title: 'kconfig: CONFIG_PREFIX pointing outside',
    case: 'fragment line CONFIG_PREFIX="../../../../etc" (make install would write busybox there)',
    expected: 'exit 2, refused: domu installs into its own staging directory',
    command: 'build',
    exit: 2,
    error: /evil\.fragment:1: CONFIG_PREFIX: domu installs busybox into its own staging directory \(make install CONFIG_PREFIX=…\); a fragment cannot choose where$/,
    prepare: kconfigCase(() => 'CONFIG_PREFIX="../../../../etc"\n'),
  },
  {
    title: 'kconfig injection: $(shell ...) in a full .config',
    case: 'busybox.config (a full .config) with CONFIG_UNAME_OSNAME="$(shell touch <tmp>/pwned)"',
    expected: 'exit 2, the .config line named and refused before make runs; marker file not created',
    command: 'build',
    exit: 2,
    error: /evil\.config:3: CONFIG_UNAME_OSNAME: "\$\(shell touch .*\/pwned\)" contains a \$: busybox's Makefile reads \.config/,
    prepare: kconfigCase((m) => `# busybox .config\nCONFIG_STATIC=y\nCONFIG_UNAME_OSNAME="$(shell touch ${m})"\n`, 'config'),
  },
];

// ---------------------------------------------------------------------------------------------
// 3. Kernel module trees given with `domu modules --kernel <dir>`

/** A fresh `<dir>/<release>` with copies of the package's modules (`rel` paths), and the tree. */
async function moduleTree(dir: string, rels: Record<string, string>): Promise<string> {
  const tree = join(dir, kernel.release);
  for (const [to, from] of Object.entries(rels)) {
    await mkdir(join(tree, to, '..'), { recursive: true });
    await copyFile(join(kernel.modules, from), join(tree, to));
  }
  await mkdir(join(tree, 'kernel'), { recursive: true });
  return tree;
}

const NETFRONT = 'kernel/drivers/net/xen-netfront.ko';

/** The .modinfo of a real module with `name=` and `depends=` replaced. */
async function craftedModinfo(dir: string, file: string, name: string, depends: string): Promise<void> {
  const raw = join(dir, `${name}.modinfo.orig`);
  await execa('objcopy', ['-O', 'binary', '--only-section=.modinfo', file, raw]);
  const fields = (await readFile(raw, 'latin1')).split('\0').filter(Boolean).filter((f) => !/^(name|depends|alias)=/.test(f));
  const info = join(dir, `${name}.modinfo`);
  await writeFile(info, `${[...fields, `name=${name}`, `depends=${depends}`].join('\0')}\0`, 'latin1');
  await execa('objcopy', [`--update-section`, `.modinfo=${info}`, file]);
}

function modulesCase(build: (dir: string, tree: string) => Promise<string[]>) {
  return async (dir: string): Promise<Prepared> => {
    const tree = await moduleTree(dir, { 'kernel/xen-netfront.ko': NETFRONT });
    const requests = await build(dir, tree);
    const before = await filesIn(tree);
    return {
      args: ['modules', '--kernel', tree, '--cache-dir', join(dir, 'cache'), ...requests],
      after: async () => {
        expect(await filesIn(tree), 'nothing written into the modules tree').toEqual(before);
        return 'the modules tree unchanged';
      },
    };
  };
}

const moduleCases: Case[] = [
  {
    title: 'modules: a .ko that is not ELF',
    case: 'modules tree with kernel/fake.ko being a shell script',
    expected: 'exit 1, "<file>: not an ELF file"',
    command: 'modules',
    exit: 1,
    error: /^\/.*\/kernel\/fake\.ko: not an ELF file$/,
    prepare: modulesCase(async (_d, tree) => {
      await writeFile(join(tree, 'kernel', 'fake.ko'), '#!/bin/sh\necho not a module\n');
      return ['xen-netfront'];
    }),
  },
  {
    title: 'modules: ELF without .modinfo',
    case: 'modules tree with a real module whose .modinfo section was removed (objcopy -R .modinfo)',
    expected: 'exit 1, "no .modinfo section (not a kernel module?)"',
    command: 'modules',
    exit: 1,
    error: /^\/.*\/kernel\/stripped\.ko: no \.modinfo section \(not a kernel module\?\)$/,
    prepare: modulesCase(async (_d, tree) => {
      const f = join(tree, 'kernel', 'stripped.ko');
      await copyFile(join(kernel.modules, 'kernel/fs/mbcache.ko'), f);
      await execa('objcopy', ['--remove-section', '.modinfo', f]);
      return ['xen-netfront'];
    }),
  },
  {
    title: 'modules: corrupt ELF section table',
    case: 'modules tree with a .ko whose ELF header puts the section table past the end of the file',
    expected: 'exit 1, "truncated or corrupt ELF file", no crash',
    command: 'modules',
    exit: 1,
    error: /^\/.*\/kernel\/broken\.ko: truncated or corrupt ELF file/,
    prepare: modulesCase(async (_d, tree) => {
      const bytes = await readFile(join(kernel.modules, 'kernel/fs/mbcache.ko'));
      bytes.writeBigUInt64LE(BigInt(bytes.length + 4096), 0x28); // e_shoff
      await writeFile(join(tree, 'kernel', 'broken.ko'), bytes);
      return ['xen-netfront'];
    }),
  },
  {
    title: 'modules: truncated .ko.xz',
    case: 'modules tree with a .ko.xz cut in half',
    expected: 'exit 1, "truncated or corrupt xz data" naming the file',
    command: 'modules',
    exit: 1,
    error: /^\/.*\/kernel\/mbcache\.ko\.xz: truncated or corrupt xz data/,
    prepare: modulesCase(async (_d, tree) => {
      const f = join(tree, 'kernel', 'mbcache.ko');
      await copyFile(join(kernel.modules, 'kernel/fs/mbcache.ko'), f);
      await execa('xz', [f]);
      const full = await readFile(`${f}.xz`);
      await writeFile(`${f}.xz`, full.subarray(0, full.length >> 1));
      return ['xen-netfront'];
    }),
  },
  {
    title: 'modules: circular depends',
    case: 'two real modules edited so that alpha depends on beta and beta on alpha',
    expected: 'exit 1, "module dependency cycle: alpha → beta → alpha"',
    command: 'modules',
    exit: 1,
    error: /^module dependency cycle: alpha → beta → alpha$/,
    prepare: modulesCase(async (dir, tree) => {
      for (const [name, dep] of [
        ['alpha', 'beta'],
        ['beta', 'alpha'],
      ] as const) {
        const f = join(tree, 'kernel', `${name}.ko`);
        await copyFile(join(kernel.modules, NETFRONT), f);
        await craftedModinfo(dir, f, name, dep);
      }
      return ['alpha'];
    }),
  },
  {
    title: 'modules: symlink loop in the tree',
    case: 'modules tree with a symlink loop kernel/loop -> . (and a request for a module that is not there)',
    expected: 'exit 2 "no kernel module or alias" at once (the loop is not followed); the real module still resolves (exit 0)',
    command: 'modules',
    exit: 2,
    error: /^no kernel module or alias "nosuch" in \/.*$/,
    prepare: async (dir) => {
      const p = await modulesCase(async (_d, tree) => {
        await symlink('.', join(tree, 'kernel', 'loop'));
        await symlink('self.ko', join(tree, 'kernel', 'self.ko'));
        return ['nosuch'];
      })(dir);
      return {
        ...p,
        after: async (r) => {
          await p.after!(r);
          const ok = await domu(p.args.map((a) => (a === 'nosuch' ? 'xen-netfront' : a)));
          expect(ok.exitCode, ok.stderr).toBe(0);
          expect(ok.stdout).toMatch(/^ {3}1\. xen_netfront .* ok .*\(requested\)$/m);
          expect(ok.stdout).not.toMatch(/^ {3}2\./m); // once, not once per trip round the loop
          return 'the modules tree unchanged; the loop was not followed: xen-netfront resolved once (exit 0)';
        },
      };
    },
  },
  {
    title: 'modules: name with / and ..',
    case: 'domu modules ../../etc/passwd',
    expected: 'exit 2 while planning: expected a module name or alias',
    command: 'modules',
    exit: 2,
    error: /^module name "\.\.\/\.\.\/etc\/passwd": expected a module name or alias like xen-netfront$/,
    prepare: modulesCase(async () => ['../../etc/passwd']),
  },
  {
    title: 'modules: name ".."',
    case: 'domu modules .. (a module name that is a parent directory)',
    expected: 'exit 2, no kernel module or alias ".."; nothing outside the tree is read',
    command: 'modules',
    exit: 2,
    error: /^no kernel module or alias "\.\." in \//,
    prepare: modulesCase(async () => ['..']),
  },
  {
    title: 'modules: modules.dep pointing outside the tree',
    case: 'modules tree whose modules.dep lists ../elsewhere/mbcache.ko, a real module outside the tree (it used to be resolved, and a build would copy it into the guest)',
    expected: 'exit 1, the modules.dep line named: the path leaves the modules directory',
    command: 'modules',
    exit: 1,
    error: /^\/.*\/modules\.dep:2: the module path "\.\.\/elsewhere\/mbcache\.ko" leaves the modules directory$/,
    prepare: modulesCase(async (dir, tree) => {
      await mkdir(join(dir, 'elsewhere'));
      await copyFile(join(kernel.modules, 'kernel/fs/mbcache.ko'), join(dir, 'elsewhere', 'mbcache.ko'));
      await writeFile(join(tree, 'modules.dep'), 'kernel/xen-netfront.ko:\n../elsewhere/mbcache.ko:\n');
      return ['mbcache'];
    }),
  },
];

// ---------------------------------------------------------------------------------------------

describe.concurrent('hostile archives (domu build --source … --until extract)', () => {
  for (const c of archiveCases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});

describe.concurrent('hostile build descriptions and flags', () => {
  for (const c of descriptionCases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});

describe.concurrent('make and kconfig injection (domu build --until kconfig)', () => {
  for (const c of kconfigCases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});

describe.concurrent('hostile kernel module trees (domu modules --kernel DIR)', () => {
  for (const c of moduleCases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});

// ---------------------------------------------------------------------------------------------
// 3b. What the machine refuses: an image.size that --out's file system cannot hold as a file
// (EFBIG), a process file size limit, names too long, symlink loops. Each is refused before any
// stage runs (the run only takes the --out lock and probes --out), in one line.

/** `domu <args>` under `prlimit --fsize=<bytes>` (ulimit -f), the CLI as test/helpers/cli.ts runs it. */
function underFileSizeLimit(bytes: number) {
  return async (args: string[]): Promise<CliResult> => {
    const r = await execa('prlimit', [`--fsize=${bytes}`, '--', process.execPath, domuBin(), ...args], {
      cwd: PROJECT_ROOT,
      env: { NODE_OPTIONS: '' },
      reject: false,
      stdin: 'ignore',
    });
    return { exitCode: r.exitCode ?? -1, stdout: String(r.stdout), stderr: String(r.stderr) };
  };
}

/**
 * After a run refused before any stage: no stage line on stderr (only the error, its hint and the
 * log's path), --out holds nothing, the cache holds only the run's log and an empty journal
 * directory (nothing left for a later run to undo), and `unchanged` files are as they were.
 */
async function refusedBeforeStages(r: CliResult, out: string, cache: string, unchanged: Record<string, string> = {}): Promise<string> {
  const lines = r.stderr.split('\n').filter(Boolean);
  expect(lines.filter((l) => !/^(domu build: error: | {2}hint: |log: )/.test(l)), 'no stage started').toEqual([]);
  expect((await filesIn(out)).filter((f) => !(f in unchanged)), '--out holds nothing new').toEqual([]);
  for (const [f, text] of Object.entries(unchanged)) expect(await readFile(join(out, f), 'utf8'), `${f} unchanged`).toBe(text);
  expect(await names(cache), 'no stage wrote to the cache').toEqual(['journals', 'runs']);
  expect(await names(join(cache, 'journals')), 'nothing left for a later run').toEqual([]);
  return `refused before any stage (no stage line, nothing cached); --out ${Object.keys(unchanged).length ? 'as it was' : 'holds nothing'}, no temporary left`;
}

const machineCases: Case[] = [
  {
    title: 'image size: 2G under ulimit -f 1G',
    case: 'domu build --set image.size=2G run under a file size limit of 1 GiB (ulimit -f; prlimit --fsize)',
    expected: 'exit 2 before any stage: the size and the limit named, "raise the limit … or choose a smaller image.size"; nothing written',
    command: 'build',
    exit: 2,
    error: /^image\.size 2 GiB is larger than the biggest file this process may write \(ulimit -f: 1 GiB\); raise the limit \(ulimit -f unlimited\) or choose a smaller image\.size \(e\.g\. --set image\.size=1G\)$/,
    prepare: async (dir) => {
      const out = join(dir, 'out');
      const cache = join(dir, 'cache');
      return {
        args: ['build', '--set', 'image.size=2G', '--out', out, '--cache-dir', cache],
        run: underFileSizeLimit(2 ** 30),
        after: async (r) => refusedBeforeStages(r, out, cache),
      };
    },
  },
  {
    title: 'flag: --out with a 300-byte name',
    case: '--out whose last name is 300 bytes long (file names hold 255)',
    expected: 'exit 1, "cannot mkdir <out>: the name is too long" (it was an internal error with a stack trace); nothing created',
    command: 'build',
    exit: 1,
    error: /^cannot mkdir \/.*\/x{300}: the name is too long \(at most 255 bytes a name, 4095 a path\)$/,
    prepare: async (dir) => ({
      args: ['build', '--out', join(dir, 'x'.repeat(300)), '--cache-dir', join(dir, 'cache'), '--until', 'source'],
      after: async () => {
        expect(await names(dir), 'only the cache was made').toEqual(['cache']);
        expect(await names(join(dir, 'cache', 'journals'))).toEqual([]);
        return 'nothing created but the run log';
      },
    }),
  },
  {
    title: 'flag: --cache-dir with a 300-byte name',
    case: '--cache-dir whose last name is 300 bytes long',
    expected: 'exit 1, "cannot mkdir …: the name is too long" (it was an internal error); nothing created',
    command: 'build',
    exit: 1,
    error: /^cannot mkdir \/.*\/x{300}\/runs\/\S+: the name is too long \(at most 255 bytes a name, 4095 a path\)$/,
    prepare: async (dir) => ({
      args: ['build', '--cache-dir', join(dir, 'x'.repeat(300)), '--out', join(dir, 'out'), '--until', 'source'],
      after: async () => {
        expect(await names(dir), 'nothing created').toEqual([]);
        return 'nothing created';
      },
    }),
  },
  {
    title: 'flag: --out through a symlink loop',
    case: '--out <tmp>/loop/out where loop is a symbolic link to itself',
    expected: 'exit 1, "cannot mkdir …: too many levels of symbolic links" (it was an internal error); the link untouched',
    command: 'build',
    exit: 1,
    error: /^cannot mkdir \/.*\/loop\/out: too many levels of symbolic links \(a link that leads back to itself\?\)$/,
    prepare: async (dir) => {
      await symlink('loop', join(dir, 'loop'));
      return {
        args: ['build', '--out', join(dir, 'loop', 'out'), '--cache-dir', join(dir, 'cache'), '--until', 'source'],
        after: async () => {
          expect(await readlink(join(dir, 'loop'))).toBe('loop');
          expect(await names(dir)).toEqual(['cache', 'loop']);
          return 'the link untouched, nothing created but the run log';
        },
      };
    },
  },
];

describe.concurrent('what the machine refuses (file size limits, long names, symlink loops)', () => {
  for (const c of machineCases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});

describe.skipIf(!isRoot)('image sizes that --out cannot hold (a loop-mounted ext4, 4 KiB blocks)', () => {
  let fs: string;

  beforeAll(async () => {
    const base = join(root, 'ext4-out');
    await mkdir(base, { recursive: true });
    const backing = join(base, 'out.ext4');
    await writeFile(backing, '');
    await truncate(backing, 32 * 1048576);
    await execa('mke2fs', ['-q', '-t', 'ext4', '-b', '4096', '-F', backing]);
    fs = join(base, 'mnt');
    await mkdir(fs);
    await execa('mount', ['-o', 'loop', backing, fs]);
  }, 120_000);

  afterAll(async () => {
    if (fs) await execa('umount', [fs]).catch(() => execa('umount', ['-l', fs]).catch(() => undefined));
  });

  const sizeCase = (size: string, bytes: string, previous: boolean): Case => ({
    title: `image size: ${size} on ext4${previous ? ' over a previous build' : ''}`,
    case: `domu build --set image.size=${size} with --out on ext4 (4 KiB blocks: no file above 16 TiB - 4 KiB)${previous ? ', --out holding a previous build' : ''}`,
    expected: `exit 2 before any stage (it was "internal error: EFBIG … ftruncate" after the compile): the size, --out, ext4 and the limit named, a size that fits suggested; ${previous ? 'the previous build untouched' : 'nothing written'}`,
    command: 'build',
    exit: 2,
    error: new RegExp(
      `^image\\.size ${bytes} is larger than the biggest file /.*/out \\(ext4\\) can hold \\(16 TiB - 4 KiB\\); choose a smaller image\\.size \\(e\\.g\\. --set image\\.size=15T\\) or an --out on a file system that holds bigger files$`,
    ),
    prepare: async (dir) => {
      const out = join(fs, slug(size + (previous ? '-previous' : '')), 'out');
      const cache = join(dir, 'cache');
      const unchanged: Record<string, string> = previous ? { 'busybox.img': 'previous image\n', 'build.json': '{}\n' } : {};
      for (const [f, text] of Object.entries(unchanged)) {
        await mkdir(out, { recursive: true });
        await writeFile(join(out, f), text);
      }
      return {
        args: ['build', '--set', `image.size=${size}`, '--out', out, '--cache-dir', cache],
        after: async (r) => {
          const note = await refusedBeforeStages(r, out, cache, unchanged);
          const left = (await readdir(fs, { recursive: true })).filter((n) => n.includes('.tmp-'));
          expect(left, 'no probe file left on the file system').toEqual([]);
          return note;
        },
      };
    },
  });

  const cases = [sizeCase('16T', '16 TiB', false), sizeCase('20T', '20 TiB', false), sizeCase('100T', '100 TiB', false), sizeCase('16T', '16 TiB', true)];
  for (const c of cases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});

// ---------------------------------------------------------------------------------------------
// 4. The shared store (domu configs --publish): a loop-mounted ext4 store and a read-only mount

describe.skipIf(!isRoot)('hostile stores (domu configs --publish, a loop-mounted ext4 store)', () => {
  let store: string;
  let roStore: string;
  let config: string;
  let bigOut: string;
  const mounts: string[] = [];

  beforeAll(async () => {
    const base = join(root, 'stores');
    await mkdir(base, { recursive: true });
    const backing = join(base, 'store.ext4');
    await writeFile(backing, '');
    await truncate(backing, 32 * 1048576);
    await execa('mke2fs', ['-q', '-t', 'ext4', '-F', backing]);
    store = join(base, 'scsistore');
    await mkdir(store);
    await execa('mount', ['-o', 'loop', backing, store]);
    mounts.push(store);
    // A read-only mount: a bind mount of a directory with one file, remounted read-only.
    const roSrc = join(base, 'ro-src');
    roStore = join(base, 'ro-store');
    await mkdir(roSrc);
    await mkdir(roStore);
    await writeFile(join(roSrc, 'keep.txt'), 'keep\n');
    await execa('mount', ['--bind', roSrc, roStore]);
    mounts.push(roStore);
    await execa('mount', ['-o', 'remount,bind,ro', roStore]);
    config = join(base, 'guest.yaml');
    await writeFile(config, `kernel:\n  image: ${kernel.image}\n`);
    // An --out that holds a 16 TiB sparse file (tmpfs), for a store that cannot.
    bigOut = join(base, 'tmpfs-out');
    await mkdir(bigOut);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', bigOut]);
    mounts.push(bigOut);
  }, 120_000);

  afterAll(async () => {
    for (const m of mounts.reverse()) await execa('umount', [m]).catch(() => execa('umount', ['-l', m]).catch(() => undefined));
  });

  /** Empty the store (but lost+found) before each case. */
  async function clean(): Promise<void> {
    for (const n of await names(store)) await rm(join(store, n), { recursive: true, force: true });
  }

  const publishArgs = (dir: string, s: string, extra: string[] = []) => ['configs', '--publish', '--store', s, '--config', config, '--out', join(dir, 'out'), '--cache-dir', join(dir, 'cache'), ...extra];

  const storeCases: Case[] = [
    {
      title: 'store: image.size 16T on an ext4 store',
      case: 'domu build --publish --set image.size=16T, --out on tmpfs (holds it), the store a small ext4 (mke2fs picks 1 KiB blocks: no file above 4 TiB - 1 KiB)',
      expected: 'exit 2 in the store check, the first stage (before any compile): the size, the store, ext4 and the limit probed there named; the store and --out untouched',
      command: 'build',
      exit: 2,
      error: /^image\.size 16 TiB is larger than the biggest file the store \/.*\/scsistore \(ext4\) can hold \((?:4 TiB - 1 KiB|16 TiB - 4 KiB)\); choose a smaller image\.size \(e\.g\. --set image\.size=(?:3T|15T)\) or a store on a file system that holds bigger files$/,
      prepare: async (dir) => {
        await clean();
        const out = join(bigOut, slug(dir));
        const cache = join(dir, 'cache');
        return {
          args: ['build', '--publish', '--store', store, '--config', config, '--set', 'image.size=16T', '--out', out, '--cache-dir', cache],
          after: async (r) => {
            expect(r.stderr, 'no stage after the store check').not.toMatch(/Fetch busybox|Compile busybox|Build the ext4 image/);
            expect(await names(store), 'the store unchanged (no probe file left)').toEqual([]);
            expect(await filesIn(out), '--out holds nothing').toEqual([]);
            expect(await names(join(cache, 'journals')), 'nothing left for a later run').toEqual([]);
            return 'refused in the store check, before any build stage; the store and --out untouched';
          },
        };
      },
    },
    {
      title: 'store: not mounted',
      case: 'publish into a store directory that is not a mount point (the iSCSI LUN not mounted), without --allow-unmounted',
      expected: 'exit 2 before any work: "is not a mount point"; the directory and --out untouched',
      command: 'configs',
      exit: 2,
      error: /^the store \/.* is not a mount point: the shared store does not seem to be mounted there, and publishing would write into the directory below it$/,
      prepare: async (dir) => {
        const plain = join(dir, 'scsistore');
        await mkdir(plain);
        return {
          args: publishArgs(dir, plain),
          after: async () => {
            expect(await names(plain)).toEqual([]);
            expect(await filesIn(join(dir, 'out')), '--out holds nothing').toEqual([]);
            return 'the directory stayed empty, nothing in --out';
          },
        };
      },
    },
    {
      title: 'store: the root file system',
      case: '--store / (a mount point, but the Dom0\'s own root: boot/, xen/ and the image would land in its system)',
      expected: 'exit 2 before any work: a system directory of this host, not the shared store; nothing written in /',
      command: 'configs',
      exit: 2,
      error: /^the store \/ is a system directory of this host, not the shared store; nothing was written$/,
      prepare: async (dir) => {
        const created = ['/xen', '/hosts', '/storage'];
        for (const p of created) expect(await exists(p), `${p} must not exist before the case`).toBe(false);
        return {
          args: publishArgs(dir, '/'),
          after: async () => {
            const found = [];
            for (const p of created) if (await exists(p)) found.push(p);
            for (const p of found) await rm(p, { recursive: true, force: true }); // a regression: undo it
            expect(found, 'nothing published into /').toEqual([]);
            expect(await filesIn(join(dir, 'out')), '--out holds nothing').toEqual([]);
            return 'nothing written in /, nothing in --out';
          },
        };
      },
    },
    {
      title: 'store: mounted read-only',
      case: 'publish into a store mounted read-only',
      expected: 'exit 2 before any work: "is not writable (read-only file system)"',
      command: 'configs',
      exit: 2,
      error: /^the store \/.*\/ro-store is not writable \(read-only file system\)$/,
      prepare: async (dir) => ({
        args: publishArgs(dir, roStore),
        after: async () => {
          expect(await names(roStore)).toEqual(['keep.txt']);
          expect(await filesIn(join(dir, 'out')), '--out holds nothing').toEqual([]);
          return 'the store unchanged, nothing in --out';
        },
      }),
    },
    {
      title: 'store: xen/ is a symlink to a directory outside',
      case: '<store>/xen is a symlink to a directory outside the store (/tmp/elsewhere)',
      expected: 'exit 2, the link named and refused; nothing written outside nor in the store',
      command: 'configs',
      exit: 2,
      error: /^the store path \/.*\/scsistore\/xen is a link to \/.*\/elsewhere, outside the store \/.*\/scsistore: publish writes only into real directories of the store, never through a symbolic link; nothing was written$/,
      prepare: async (dir) => {
        await clean();
        const elsewhere = join(dir, 'elsewhere');
        await mkdir(elsewhere);
        await symlink(elsewhere, join(store, 'xen'));
        return {
          args: publishArgs(dir, store),
          after: async () => {
            expect(await names(elsewhere), 'nothing written outside').toEqual([]);
            expect(await names(store), 'nothing written in the store').toEqual(['xen']);
            expect(await readlink(join(store, 'xen'))).toBe(elsewhere);
            return 'the outside directory stayed empty; the store holds only the link';
          },
        };
      },
    },
    {
      title: 'store: hosts/ is a dangling symlink',
      case: '<store>/hosts is a symlink to a directory that does not exist (mkdir -p would create it outside)',
      expected: 'exit 2, refused; the link target is not created',
      command: 'configs',
      exit: 2,
      error: /^the store path \/.*\/scsistore\/hosts is a link to nowhere: publish writes only into real directories of the store, never through a symbolic link; nothing was written$/,
      prepare: async (dir) => {
        await clean();
        const target = join(dir, 'not-there', 'hosts');
        await symlink(target, join(store, 'hosts'));
        return {
          args: publishArgs(dir, store),
          after: async () => {
            expect(await exists(join(dir, 'not-there'))).toBe(false);
            expect(await names(store)).toEqual(['hosts']);
            return 'the link target was not created; nothing published';
          },
        };
      },
    },
    {
      title: 'store: a domain config is a symlink to a file outside',
      case: '<store>/xen/test1/busybox.cfg is a symlink to a file outside the store',
      expected: 'exit 2, refused as made by hand (the outside file untouched); with --force the link itself is replaced (kept as .bak), never written through',
      command: 'configs',
      exit: 2,
      error: /^refusing to publish to \/.*\/scsistore: 1 file there was edited or made by hand: xen\/test1\/busybox\.cfg; nothing was written$/,
      prepare: async (dir) => {
        await clean();
        const outside = join(dir, 'outside.cfg');
        await writeFile(outside, 'ORIGINAL\n');
        await mkdir(join(store, 'xen', 'test1'), { recursive: true });
        const cfg = join(store, 'xen', 'test1', 'busybox.cfg');
        await symlink(outside, cfg);
        return {
          args: publishArgs(dir, store),
          after: async () => {
            expect(await readFile(outside, 'utf8')).toBe('ORIGINAL\n');
            expect((await lstat(cfg)).isSymbolicLink()).toBe(true);
            expect(await names(join(store, 'xen', 'test1'))).toEqual(['busybox.cfg']);
            const forced = await domu(publishArgs(dir, store, ['--force']));
            expect(forced.exitCode, forced.stderr).toBe(0);
            expect(await readFile(outside, 'utf8'), 'never written through the link').toBe('ORIGINAL\n');
            expect((await lstat(cfg)).isFile()).toBe(true);
            expect(await readFile(cfg, 'utf8')).toContain('name = "busybox"');
            expect(await readlink(`${cfg}.bak`)).toBe(outside);
            return 'outside file unchanged; with --force the link was replaced and kept as .bak, the outside file still unchanged';
          },
        };
      },
    },
    {
      title: 'store: lock held by another host',
      case: "the store's lock is held by a publisher on another Dom0 (lock JSON with another host name), --lock-timeout 1",
      expected: 'exit 1 once --lock-timeout has passed, naming the other host, its pid and start time; the lock is never broken; nothing published',
      command: 'configs',
      exit: 1,
      error: /^the store is locked by host dom0-other\.example pid 4242 \(since 2030-01-01T00:00:00\.000Z, "domu build --publish"\); gave up after \d+\.\d s; a lock of another host is never broken automatically: wait for that publish, or if dom0-other\.example is down and nothing publishes there, remove \/.*\/\.domu-publish\.lock by hand$/,
      prepare: async (dir) => {
        await clean();
        expect(hostname()).not.toBe('dom0-other.example');
        const lock = join(store, LOCK_NAME);
        const text = `${JSON.stringify({ host: 'dom0-other.example', pid: 4242, started: '2030-01-01T00:00:00.000Z', command: 'domu build --publish' })}\n`;
        await writeFile(lock, text);
        return {
          args: publishArgs(dir, store, ['--lock-timeout', '1']),
          after: async () => {
            expect(await readFile(lock, 'utf8')).toBe(text);
            expect(await names(store)).toEqual([LOCK_NAME]);
            return 'the lock left byte for byte; nothing published';
          },
        };
      },
    },
    {
      title: 'store: the lock file is a symlink',
      case: "the store's lock file is a symlink (to a file outside the store, or dangling: it used to spin forever)",
      expected: 'exit 2 before any work: the lock is not domu\'s; the outside file untouched',
      command: 'configs',
      exit: 2,
      error: /^the store lock \/.*\/\.domu-publish\.lock is a symbolic link \(to nowhere\), not domu's lock file; nothing was written$/,
      prepare: async (dir) => {
        await clean();
        const outside = join(dir, 'outside-lock');
        await symlink(outside, join(store, LOCK_NAME));
        return {
          args: publishArgs(dir, store, ['--lock-timeout', '1']),
          after: async () => {
            expect(await exists(outside)).toBe(false);
            expect(await names(store)).toEqual([LOCK_NAME]);
            // The same with a target that exists: never read as a lock, never changed.
            await writeFile(outside, 'not a lock\n');
            await chmod(outside, 0o600);
            const again = await domu(publishArgs(dir, store, ['--lock-timeout', '1']));
            expectCleanFailure(again, 'configs', 2, /^the store lock \/.*\/\.domu-publish\.lock is a symbolic link \(to \/.*\/outside-lock\), not domu's lock file; nothing was written$/);
            expect(await readFile(outside, 'utf8')).toBe('not a lock\n');
            return 'the target not created nor changed; nothing published';
          },
        };
      },
    },
  ];

  for (const c of storeCases) test(c.title, async ({ task }) => runCase(task, c), 60_000);
});
