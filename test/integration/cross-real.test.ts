// A real cross build: busybox 1.35.0 for aarch64 with Debian's gcc-aarch64-linux-gnu and the
// static glibc of libc6-dev-arm64-cross (both in the Makefile's TEST_PACKAGES). The binary cannot
// run here, so it is checked with our ELF reader. An unknown prefix is a one-line error.
import { existsSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readElfFile } from '../../src/kernel/elf.js';
import { which } from '../../src/core/exec.js';
import { getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { domuJson, stage } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';

const PREFIX = 'aarch64-linux-gnu-';
const EM_AARCH64 = 183;


/** Why the cross build cannot be tested here, or undefined when it can. */
async function crossMissing(): Promise<string | undefined> {
  const gcc = await which(`${PREFIX}gcc`);
  if (!gcc) return `${PREFIX}gcc not found on PATH`;
  // The static C library the link needs: the compiler answers a bare "libc.a" when it has none.
  const libc = String((await execa(gcc, ['-print-file-name=libc.a'], { reject: false })).stdout).trim();
  if (!isAbsolute(libc) || !existsSync(libc)) return `${PREFIX}gcc has no static libc.a`;
  return undefined;
}

const missing = await crossMissing();
const INSTALL = 'apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross (make test does it: TEST_PACKAGES)';
if (missing) console.warn(`cross-real: SKIPPING the aarch64 cross build: ${missing}; ${INSTALL}`);

let dir: string;
let tarball: string;

beforeAll(async () => {
  tarball = await getBusyboxTarball();
  dir = await tempDir('domu-cross-real-');
  // Our own description: the project's guest.yaml is not read; defaults apply.
  await writeFile(join(dir, 'plain.yaml'), 'busybox:\n  version: 1.35.0\n');
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function build(cache: string, extra: string[]): ReturnType<typeof domuJson> {
  return domuJson(['build', '--json', '--until', 'compile', '--out', join(dir, 'out'), '--config', join(dir, 'plain.yaml'), '--cache-dir', cache, '--source', tarball, '--jobs', '2', ...extra]);
}


describe.skipIf(missing !== undefined)(missing ? `aarch64 cross build — SKIPPED: ${missing}; ${INSTALL}` : 'aarch64 cross build', () => {
  it(
    `--set busybox.cross_compile=${PREFIX}: a static aarch64 busybox`,
    async () => {
      const { r, s } = await build(join(dir, 'cache'), ['--set', `busybox.cross_compile=${PREFIX}`]);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(s.ok).toBe(true);
      expect(s.stages.map((x) => [x.name, x.status])).toEqual([
        ['source', 'done'],
        ['extract', 'done'],
        ['kconfig', 'done'],
        ['compile', 'done'],
      ]);

      const k = stage(s, 'kconfig').outputs;
      expect(k.makeVars).toEqual(expect.arrayContaining([`CROSS_COMPILE=${PREFIX}`, 'ARCH=arm64']));
      expect(k.makeVars).not.toContain('CC=musl-gcc');
      expect(k.compiler).toMatch(new RegExp(`^${PREFIX}gcc `));
      expect(k.libc).toBe('glibc');
      // Probed through the cross compiler's own headers (libc6-dev-arm64-cross).
      expect(k.glibc).toMatch(/^2\.\d+$/);

      const c = stage(s, 'compile').outputs;
      expect(c).toMatchObject({ static: true, machine: 'aarch64', cacheHit: false });
      expect(c.applets ?? null).toBeNull(); // cannot run here, so not counted
      const binary = c.binary as string;
      const elf = await readElfFile(binary);
      expect(elf.machine).toBe(EM_AARCH64);
      expect(elf.machineName).toBe('aarch64');
      expect(elf.class).toBe(64);
      expect(elf.endian).toBe('little');
      expect(elf.isStatic()).toBe(true);
      expect(elf.interpreter()).toBeUndefined();
      expect(elf.needed()).toEqual([]);

      const config = await readFile(join(dirname(c.installTree as string), 'config'), 'utf8');
      expect(config).toMatch(/^CONFIG_STATIC=y$/m);
      // make really compiled with the cross compiler.
      const buildLog = await readFile(c.log as string, 'utf8');
      expect(buildLog).toMatch(/^\s+CC\s/m);
      const runLog = await readFile(s.log, 'utf8');
      expect(runLog).toMatch(new RegExp(`\\$ make CROSS_COMPILE=${PREFIX} ARCH=arm64 -j2\\b`));
    },
    300_000,
  );
});

describe('an unknown cross prefix', () => {
  it('an unknown CPU is bad input: exit 2 with one clear line before any stage, no stack trace', async () => {
    const cache = join(dir, 'nosuch-cache');
    const { r, s } = await build(cache, ['--set', 'busybox.cross_compile=nosuch-linux-gnu-']);
    expect(r.exitCode).toBe(2);
    expect(s).toMatchObject({ ok: false, exitCode: 2 });
    const first = r.stderr.split('\n').find((l) => l.startsWith('domu build: error: '));
    expect(first, r.stderr).toBe('domu build: error: busybox.cross_compile nosuch-linux-gnu-: unknown target CPU "nosuch"');
    expect(existsSync(cache)).toBe(false); // nothing ran
  });

  it('a known CPU whose compiler is not installed fails naming the program and the package', async () => {
    const cache = join(dir, 'nocc-cache');
    const { r, s } = await build(cache, ['--set', 'busybox.cross_compile=s390x-linux-gnu-']);
    expect(r.exitCode).toBe(1);
    expect(s).toMatchObject({ ok: false, exitCode: 1 });
    expect(r.stderr.split('\n').find((l) => l.startsWith('domu build: error: '))).toBe('domu build: error: program not found: s390x-linux-gnu-gcc');
    expect(r.stderr).toMatch(/hint: install the cross compiler \(e\.g\. apt-get install gcc-s390x-linux-gnu\)/);
    expect(s.error?.message).not.toContain('\n');
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(s.stages.find((x) => x.name === 'compile')?.status ?? 'skipped').toBe('skipped');
    expect(existsSync(join(cache, 'installs'))).toBe(false);
  });
});
