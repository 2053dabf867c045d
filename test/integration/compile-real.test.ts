// The real thing: `domu build` configures and compiles Debian's busybox 1.35.0 source (the
// upstream release tarball) with the real make and gcc / musl-gcc, as a user runs it.
// Full compiles are few (glibc, musl); the cache, --no-cache and full-.config paths use a tiny
// allnoconfig build that compiles in seconds.
import { existsSync } from 'node:fs';
import { lstat, mkdir, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readElfFile } from '../../src/kernel/elf.js';
import { sha256 } from '../../src/core/hash.js';
import { projectPath } from '../../src/core/paths.js';
import { REQUIRED_APPLETS } from '../../src/stages/initramfs.js';
import { getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { domuJson, stage, type Summary } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';

const COMPILE_TIMEOUT = 300_000;
const COMPAT_HEADER = projectPath('busybox-config', 'compat', 'stime.h');
const EM_X86_64 = 62;

interface Adjustment {
  symbol: string;
  value: string;
  why: string;
}

let dir: string;
let tarball: string;

beforeAll(async () => {
  tarball = await getBusyboxTarball();
  dir = await tempDir('domu-compile-real-');
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/**
 * `domu build --json`, with a description of our own unless `extra` names one: the project's
 * guest.yaml is not read, so the defaults apply (with the project's busybox-config/static.fragment).
 */
async function build(cache: string, extra: string[]): ReturnType<typeof domuJson> {
  let config: string[] = [];
  if (!extra.includes('--config')) {
    const plain = join(dir, 'plain.yaml');
    await writeFile(plain, 'busybox:\n  version: 1.35.0\n');
    config = ['--config', plain];
  }
  return domuJson(['build', '--json', '--until', 'compile', '--out', join(dir, 'out'), '--cache-dir', cache, '--busybox-version', '1.35.0', '--source', tarball, '--jobs', '2', ...config, ...extra]);
}


const statuses = (s: Summary) => s.stages.map((x) => [x.name, x.status]);
const str = (v: unknown): string => {
  expect(typeof v).toBe('string');
  return v as string;
};

/** Every command a run started, from its run log (`$ cmd …` lines). */
async function commandsOf(s: Summary): Promise<string[]> {
  const log = await readFile(str(s.log), 'utf8');
  return log
    .split('\n')
    .map((l) => /\bdebug \[[^\]]*\] \$ (.*?)(?: {3}\(in [^)]*\))?$/.exec(l)?.[1])
    .filter((c): c is string => c !== undefined);
}
const runsMake = (cmd: string) => /^(yes '' \| )?make\b/.test(cmd);

async function runBinary(file: string, args: string[]): Promise<string> {
  const r = await execa(file, args, { reject: false, stdin: 'ignore' });
  expect(r.exitCode, `${file} ${args.join(' ')}: ${String(r.stderr)}`).toBe(0);
  return String(r.stdout);
}

/**
 * The applet links `make install` made in an install tree (from the build's busybox.links, not
 * from running the binary), by name, sorted.
 */
async function installedLinks(installTree: string): Promise<string[]> {
  const entries = await readdir(installTree, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => e.isSymbolicLink())
    .map((e) => e.name)
    .sort();
}

async function glibcVersion(): Promise<[number, number]> {
  const out = String((await execa('getconf', ['GNU_LIBC_VERSION'])).stdout); // "glibc 2.36"
  const m = /glibc (\d+)\.(\d+)/.exec(out);
  if (!m) throw new Error(`getconf GNU_LIBC_VERSION: ${out}`);
  return [Number(m[1]), Number(m[2])];
}

describe('full builds of busybox 1.35.0 (Debian source)', () => {
  let cache: string;
  let first: Summary;

  beforeAll(() => {
    cache = join(dir, 'full-cache');
  });

  it(
    'glibc: a static x86-64 busybox that runs, with the install tree and the final .config',
    async () => {
      const { r, s } = await build(cache, []);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(s.ok).toBe(true);
      expect(statuses(s)).toEqual([
        ['source', 'done'],
        ['extract', 'done'],
        ['kconfig', 'done'],
        ['compile', 'done'],
      ]);
      first = s;

      const c = stage(s, 'compile').outputs;
      expect(c).toMatchObject({ static: true, machine: 'x86-64', cacheHit: false });
      const binary = str(c.binary);
      const installTree = str(c.installTree);
      expect(binary).toBe(join(installTree, 'bin', 'busybox'));

      // Our own reading of the ELF file, not the stage's word.
      const elf = await readElfFile(binary);
      expect(elf.isStatic()).toBe(true);
      expect(elf.interpreter()).toBeUndefined();
      expect(elf.needed()).toEqual([]);
      expect(elf.machine).toBe(EM_X86_64);
      expect(c.bytes).toBe((await lstat(binary)).size);

      // It runs, as itself and through the sh link (applet chosen by argv[0]).
      expect(await runBinary(binary, ['echo', 'ok'])).toBe('ok');
      expect(await runBinary(join(installTree, 'bin', 'sh'), ['-c', 'echo $((6 * 7))'])).toBe('42');
      const listed = (await runBinary(binary, ['--list'])).split('\n').filter(Boolean);
      expect(c.applets).toBe(listed.length);
      // Counted independently: make install linked exactly these applets; the guest's ramdisk
      // and rootfs need at least the required ones (the defconfig has them all).
      expect(await installedLinks(installTree)).toEqual([...listed].sort());
      expect(listed).toEqual(expect.arrayContaining([...REQUIRED_APPLETS]));

      // The install tree.
      expect((await lstat(binary)).isFile()).toBe(true);
      expect((await lstat(join(installTree, 'bin', 'sh'))).isSymbolicLink()).toBe(true);
      expect(await readlink(join(installTree, 'bin', 'sh'))).toBe('busybox');
      for (const d of ['sbin', 'usr', 'usr/bin', 'usr/sbin']) expect((await lstat(join(installTree, d))).isDirectory(), d).toBe(true);

      // kconfig: the stime() compat header exactly when glibc is 2.31 or newer (2.36 on bookworm).
      const k = stage(s, 'kconfig').outputs;
      const [major, minor] = await glibcVersion();
      expect(k.glibc).toBe(`${major}.${minor}`);
      expect(k.libc).toBe('glibc');
      expect(k.makeVars).toEqual([]);
      const adjustments = k.adjustments as Adjustment[];
      const stime = adjustments.find((a) => a.value.includes('stime.h'));
      if (major > 2 || (major === 2 && minor >= 31)) {
        expect(stime).toEqual({ symbol: 'EXTRA_CFLAGS', value: `-include ${COMPAT_HEADER}`, why: expect.stringContaining(`glibc ${major}.${minor}`) });
      } else {
        expect(stime).toBeUndefined();
      }

      // The final .config kept with the install tree.
      const config = await readFile(join(dirname(installTree), 'config'), 'utf8');
      expect(sha256(config)).toBe(k.configSha256);
      expect(config).toMatch(/^CONFIG_STATIC=y$/m);
      const extra = /^CONFIG_EXTRA_CFLAGS="(.*)"$/m.exec(config)?.[1];
      expect(extra).toBeDefined();
      expect(extra).toContain('-include');
      expect(extra).toContain(COMPAT_HEADER);
      // No date in the header: the same configuration gives the same text (and compile key).
      expect(config.split('\n').slice(0, 6).join('\n')).not.toMatch(/\d\d:\d\d:\d\d/);

      // The build log is kept with the entry and is make's output.
      const logPath = str(c.log);
      expect(dirname(logPath)).toBe(dirname(installTree));
      const buildLog = await readFile(logPath, 'utf8');
      const ccLines = buildLog.split('\n').filter((l) => /^\s+CC\s/.test(l));
      expect(ccLines.length).toBeGreaterThan(100);
      expect(c.objects).toBe(ccLines.length);
      expect(buildLog).toMatch(/^\s+LINK\s+busybox_unstripped$/m);

      // The run log recorded the make calls; the private build directory was removed.
      const cmds = await commandsOf(s);
      expect(cmds.some((x) => /^make defconfig\b/.test(x))).toBe(true);
      expect(cmds.some((x) => /^make -j2\b/.test(x))).toBe(true);
      expect(await readdir(dirname(str(s.log)))).toEqual(['run.log']);
      // No temporaries left in the cache.
      for (const kind of ['installs', 'kconfig']) expect((await readdir(join(cache, kind))).filter((n) => n.startsWith('.tmp'))).toEqual([]);
    },
    COMPILE_TIMEOUT,
  );

  it('a second identical run takes everything from the cache and runs no make', async () => {
    expect(first, 'needs the glibc build above').toBeDefined();
    const { r, s } = await build(cache, []);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(statuses(s)).toEqual([
      ['source', 'cached'],
      ['extract', 'cached'],
      ['kconfig', 'cached'],
      ['compile', 'cached'],
    ]);
    expect(stage(s, 'kconfig').cacheHit).toBe(true);
    expect(stage(s, 'compile').cacheHit).toBe(true);
    expect(stage(s, 'compile').outputs.cacheHit).toBe(true);
    expect(stage(s, 'compile').outputs.key).toBe(stage(first, 'compile').outputs.key);
    expect(stage(s, 'compile').outputs.binary).toBe(stage(first, 'compile').outputs.binary);
    expect(stage(s, 'kconfig').outputs.configSha256).toBe(stage(first, 'kconfig').outputs.configSha256);

    // Independently of the summary: the run log shows no make, and no compiler either: the
    // toolchain's answer comes from the probe memo the first run kept (core/probememo.ts).
    const cmds = await commandsOf(s);
    expect(cmds.filter((x) => x.startsWith('gcc '))).toEqual([]);
    expect(cmds.filter(runsMake)).toEqual([]);
    expect(await readFile(str(s.log), 'utf8')).not.toMatch(/\$ make/);
  });

  it(
    'musl: a static busybox through musl-gcc with the kernel headers, without the stime header',
    async () => {
      const { r, s } = await build(cache, ['--libc', 'musl']);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(statuses(s)).toEqual([
        ['source', 'cached'],
        ['extract', 'cached'],
        ['kconfig', 'done'],
        ['compile', 'done'],
      ]);
      const k = stage(s, 'kconfig').outputs;
      expect(k.libc).toBe('musl');
      expect(k.glibc).toBeNull();
      expect(k.makeVars).toContain('CC=musl-gcc');
      const adjustments = k.adjustments as Adjustment[];
      expect(adjustments.some((a) => a.value.includes('stime.h'))).toBe(false);
      const headers = adjustments.find((a) => a.value.startsWith('-idirafter '));
      expect(headers, JSON.stringify(adjustments)).toBeDefined();
      const headerDir = headers!.value.slice('-idirafter '.length);
      expect(headerDir.startsWith(cache)).toBe(true);
      expect(existsSync(join(headerDir, 'linux', 'types.h'))).toBe(true);
      expect(existsSync(join(headerDir, 'asm', 'types.h'))).toBe(true);

      const c = stage(s, 'compile').outputs;
      expect(c).toMatchObject({ static: true, machine: 'x86-64', cacheHit: false });
      expect(c.key).not.toBe(stage(first, 'compile').outputs.key);
      const binary = str(c.binary);
      const elf = await readElfFile(binary);
      expect(elf.isStatic()).toBe(true);
      expect(elf.machine).toBe(EM_X86_64);
      expect(await runBinary(binary, ['echo', 'ok'])).toBe('ok');
      const listed = (await runBinary(binary, ['--list'])).split('\n').filter(Boolean);
      expect(c.applets).toBe(listed.length);
      expect(await installedLinks(str(c.installTree))).toEqual([...listed].sort());
      expect(listed).toEqual(expect.arrayContaining([...REQUIRED_APPLETS]));

      const config = await readFile(join(dirname(str(c.installTree)), 'config'), 'utf8');
      expect(config).toMatch(/^CONFIG_STATIC=y$/m);
      expect(config).toContain(`-idirafter ${headerDir}`);
      expect(config).not.toContain('stime.h');
      // make really ran with musl-gcc.
      expect((await commandsOf(s)).some((x) => /^make CC=musl-gcc .*-j2\b/.test(x))).toBe(true);
    },
    COMPILE_TIMEOUT,
  );
});

describe('a full .config (allnoconfig + STATIC, BUSYBOX, ECHO): cache paths and --no-cache', () => {
  let cache: string;
  let guest: string;
  let first: Summary;

  beforeAll(async () => {
    cache = join(dir, 'tiny-cache');
    const base = join(dir, 'tiny');
    await mkdir(base, { recursive: true });
    await execa('tar', ['xjf', tarball, '-C', base]);
    const tree = join(base, 'busybox-1.35.0');
    await execa('make', ['allnoconfig'], { cwd: tree });
    let config = await readFile(join(tree, '.config'), 'utf8');
    for (const sym of ['STATIC', 'BUSYBOX', 'ECHO']) {
      const off = `# CONFIG_${sym} is not set`;
      expect(config, sym).toContain(off);
      config = config.replace(off, `CONFIG_${sym}=y`);
    }
    await writeFile(join(base, 'tiny.config'), config);
    guest = join(base, 'guest.yaml');
    await writeFile(guest, 'busybox:\n  version: 1.35.0\n  config: tiny.config\n');
  });

  it(
    'builds from the full .config (no defconfig), static, with echo',
    async () => {
      const { r, s } = await build(cache, ['--config', guest]);
      expect(r.exitCode, r.stderr).toBe(0);
      first = s;
      expect(stage(s, 'kconfig')).toMatchObject({ status: 'done', cacheHit: false });
      expect(stage(s, 'kconfig').outputs.source).toBe(join(dir, 'tiny', 'tiny.config'));
      expect(stage(s, 'compile')).toMatchObject({ status: 'done', cacheHit: false });
      const c = stage(s, 'compile').outputs;
      const binary = str(c.binary);
      expect((await readElfFile(binary)).isStatic()).toBe(true);
      expect(await runBinary(binary, ['echo', 'ok'])).toBe('ok');
      const listed = (await runBinary(binary, ['--list'])).split('\n').filter(Boolean);
      expect(listed).toContain('echo');
      expect(listed).not.toContain('ls');
      expect(c.applets).toBe(listed.length);
      const cmds = await commandsOf(s);
      expect(cmds.some((x) => x.startsWith('make defconfig'))).toBe(false);
      expect(cmds.some((x) => x === "yes '' | make oldconfig")).toBe(true);
      expect(await readdir(dirname(str(s.log)))).toEqual(['run.log']);
    },
    COMPILE_TIMEOUT,
  );

  it(
    '--no-cache configures and compiles again, to the same .config and key',
    async () => {
      expect(first, 'needs the build above').toBeDefined();
      const { r, s } = await build(cache, ['--config', guest, '--no-cache']);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(statuses(s)).toEqual([
        ['source', 'done'],
        ['extract', 'done'],
        ['kconfig', 'done'],
        ['compile', 'done'],
      ]);
      expect(stage(s, 'compile').cacheHit).toBe(false);
      expect(stage(s, 'kconfig').outputs.configSha256).toBe(stage(first, 'kconfig').outputs.configSha256);
      expect(stage(s, 'compile').outputs.key).toBe(stage(first, 'compile').outputs.key);
      expect((await commandsOf(s)).filter((x) => /^make -j2$/.test(x))).toHaveLength(1);
      expect(await runBinary(str(stage(s, 'compile').outputs.binary), ['echo', 'again'])).toBe('again');
    },
    COMPILE_TIMEOUT,
  );

  it(
    'the install entry gone: kconfig from the cache, compile from a fresh copy with that .config',
    async () => {
      const key = str(stage(first, 'compile').outputs.key);
      await rm(join(cache, 'installs', key), { recursive: true });
      const { r, s } = await build(cache, ['--config', guest]);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(stage(s, 'kconfig')).toMatchObject({ status: 'cached', cacheHit: true });
      expect(stage(s, 'compile')).toMatchObject({ status: 'done', cacheHit: false });
      expect(stage(s, 'compile').outputs.key).toBe(key);
      const cmds = await commandsOf(s);
      expect(cmds.filter((x) => /oldconfig|defconfig/.test(x))).toEqual([]);
      expect(cmds.some((x) => /^make -j2$/.test(x))).toBe(true);
      expect(await runBinary(str(stage(s, 'compile').outputs.binary), ['echo', 'ok'])).toBe('ok');
      expect(await readdir(dirname(str(s.log)))).toEqual(['run.log']);
    },
    COMPILE_TIMEOUT,
  );

  it('the kconfig entry gone: kconfig runs again, gives the same .config, and the compile is a cache hit', async () => {
    await rm(join(cache, 'kconfig'), { recursive: true });
    const { r, s } = await build(cache, ['--config', guest]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(stage(s, 'kconfig')).toMatchObject({ status: 'done', cacheHit: false });
    expect(stage(s, 'kconfig').outputs.configSha256).toBe(stage(first, 'kconfig').outputs.configSha256);
    expect(stage(s, 'compile')).toMatchObject({ status: 'cached', cacheHit: true });
    expect((await commandsOf(s)).filter((x) => /^make -j/.test(x))).toEqual([]);
    // The build directory kconfig prepared is not left behind in the run directory.
    expect(await readdir(dirname(str(s.log)))).toEqual(['run.log']);
  });
  it(
    'two builds at once with the same key both succeed and leave one intact cache entry',
    async () => {
      const shared = join(dir, 'race-cache');
      const [a, b] = await Promise.all([build(shared, ['--config', guest]), build(shared, ['--config', guest])]);
      expect(a.r.exitCode, a.r.stderr).toBe(0);
      expect(b.r.exitCode, b.r.stderr).toBe(0);
      const key = str(stage(a.s, 'compile').outputs.key);
      expect(stage(b.s, 'compile').outputs.key).toBe(key);
      for (const kind of ['sources', 'trees', 'kconfig', 'installs']) {
        expect((await readdir(join(shared, kind))).filter((n) => n.startsWith('.tmp-')), kind).toEqual([]);
      }
      expect(await readdir(join(shared, 'installs'))).toEqual([key]);
      const entry = join(shared, 'installs', key);
      const meta = JSON.parse(await readFile(join(entry, 'meta.json'), 'utf8')) as { applets: number };
      const binary = join(entry, 'root', 'bin', 'busybox');
      expect(await runBinary(binary, ['echo', 'intact'])).toBe('intact');
      expect((await runBinary(binary, ['--list'])).split('\n').filter(Boolean)).toHaveLength(meta.applets);
      // Both results point at the one entry that exists.
      expect(str(stage(a.s, 'compile').outputs.binary)).toBe(binary);
      expect(str(stage(b.s, 'compile').outputs.binary)).toBe(binary);
    },
    COMPILE_TIMEOUT * 2,
  );
});

describe('bad fragments', () => {
  let base: string;

  beforeAll(async () => {
    base = join(dir, 'bad');
    await mkdir(base, { recursive: true });
    await writeFile(join(base, 'guest.yaml'), 'busybox:\n  version: 1.35.0\n  fragment: bad.fragment\n');
  });

  it('a symbol whose dependency is off: exit 2 naming it and why, no compile, nothing left in the cache', async () => {
    await writeFile(join(base, 'bad.fragment'), 'CONFIG_STATIC=y\n# CONFIG_INETD is not set\nCONFIG_FEATURE_INETD_RPC=y\n');
    const cache = join(dir, 'bad-cache');
    const { r, s } = await build(cache, ['--config', join(base, 'guest.yaml')]);
    expect(r.exitCode).toBe(2);
    expect(s).toMatchObject({ ok: false, exitCode: 2 });
    expect(r.stderr).toMatch(/^domu build: error: .*bad\.fragment did not survive oldconfig$/m);
    expect(r.stderr).toMatch(/CONFIG_FEATURE_INETD_RPC: wanted y\b.*INETD is off/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(s.error?.message).toContain('CONFIG_FEATURE_INETD_RPC');
    expect(statuses(s)).toEqual([
      ['source', 'done'],
      ['extract', 'done'],
      ['kconfig', 'failed'],
      ['compile', 'skipped'],
    ]);
    expect(existsSync(join(cache, 'installs')) ? await readdir(join(cache, 'installs')) : []).toEqual([]);
    expect(existsSync(join(cache, 'kconfig')) ? await readdir(join(cache, 'kconfig')) : []).toEqual([]);
    // kconfig ran (defconfig, oldconfig), the compile did not; its build directory was removed.
    const cmds = await commandsOf(s);
    expect(cmds.some((x) => x.startsWith('make defconfig'))).toBe(true);
    expect(cmds.some((x) => /^make -j/.test(x))).toBe(false);
    expect(await readdir(dirname(str(s.log)))).toEqual(['run.log']);
  });

  it('a compile error: exit 1 with the first compiler error line and the log path; nothing cached', async () => {
    // A fragment whose extra flags make the very first compile fail, as a broken toolchain would.
    await writeFile(join(base, 'bad.fragment'), 'CONFIG_STATIC=y\nCONFIG_EXTRA_CFLAGS="-include /nonexistent/domu-missing.h"\n');
    const cache = join(dir, 'cc-fail-cache');
    const { r, s } = await build(cache, ['--config', join(base, 'guest.yaml')]);
    expect(r.exitCode).toBe(1);
    expect(s).toMatchObject({ ok: false, exitCode: 1 });
    const first = r.stderr.split('\n').find((l) => l.startsWith('domu build: error: '));
    expect(first).toMatch(/^domu build: error: busybox 1\.35\.0 failed to compile: .*fatal error: \/nonexistent\/domu-missing\.h: No such file or directory/);
    const log = /hint: full log: (\S+)/.exec(r.stderr)?.[1];
    expect(log, r.stderr).toBeDefined();
    expect(await readFile(log!, 'utf8')).toMatch(/domu-missing\.h/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(statuses(s).at(-1)).toEqual(['compile', 'failed']);
    expect(existsSync(join(cache, 'installs')) ? await readdir(join(cache, 'installs')) : []).toEqual([]);
  }, COMPILE_TIMEOUT);

  it('a syntax error in the fragment: exit 2 with file:line before any stage runs', async () => {
    await writeFile(join(base, 'bad.fragment'), 'CONFIG_STATIC=y\n\nCONFIG_ECHO y\n');
    const cache = join(dir, 'syntax-cache');
    const { r, s } = await build(cache, ['--config', join(base, 'guest.yaml')]);
    expect(r.exitCode).toBe(2);
    expect(s).toMatchObject({ ok: false, exitCode: 2 });
    expect(r.stderr).toMatch(/^domu build: error: \S*bad\.fragment:3: /);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(s.stages.filter((x) => x.status !== 'skipped')).toEqual([]);
    expect(existsSync(cache)).toBe(false); // nothing ran, not even the run log
  });
});
