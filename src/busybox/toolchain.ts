// The C toolchain a busybox build uses, and what it offers. Probed through the compiler itself
// (its preprocessor with the build's own flags), so cross and musl toolchains answer for their
// own headers, not the host's.
import { existsSync } from 'node:fs';
import { mkdir, rename, rm, symlink } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';
import { tempPathFor } from '../core/atomic.js';
import { DomuError, InputError } from '../core/errors.js';
import { run, which, type ExecEnv } from '../core/exec.js';
import { memoizedProbe } from '../core/probememo.js';

export type Libc = 'glibc' | 'musl';

export interface ToolchainSpec {
  libc: Libc;
  /** CROSS_COMPILE prefix, e.g. aarch64-linux-gnu-; undefined for a native build. */
  crossCompile?: string | undefined;
}

export interface Toolchain {
  cc: string;
  /** First line of `cc --version` (part of the compile cache key). */
  ccVersion: string;
  libc: Libc;
  crossCompile: string | undefined;
  /** kbuild ARCH for a cross build. */
  arch: string | undefined;
  /** ELF e_machine the binary must have. */
  machine: number;
  /** glibc version of the target headers, when the libc is glibc. */
  glibc: { major: number; minor: number } | undefined;
  /** linux/pkt_sched.h defines TCA_CBQ_MAX (busybox <= 1.36 tc needs it). */
  hasTcaCbqMax: boolean;
}

/** kbuild ARCH and ELF machine for a CROSS_COMPILE prefix (e.g. aarch64-linux-gnu-). */
export function crossTarget(prefix: string): { arch: string; machine: number } {
  const cpu = prefix.split('-')[0] ?? '';
  const table: [RegExp, string, number][] = [
    [/^aarch64(_be)?$/, 'arm64', 183],
    [/^arm/, 'arm', 40],
    [/^x86_64$/, 'x86_64', 62],
    [/^i[3-6]86$/, 'i386', 3],
    [/^riscv64$/, 'riscv', 243],
    [/^mips/, 'mips', 8],
    [/^powerpc64|^ppc64/, 'powerpc', 21],
    [/^powerpc$|^ppc$/, 'powerpc', 20],
    [/^s390x$/, 's390', 22],
  ];
  const hit = table.find(([re]) => re.test(cpu));
  if (!hit) throw new InputError(`busybox.cross_compile ${prefix}: unknown target CPU "${cpu}"`, 'use a prefix like aarch64-linux-gnu- (aarch64, arm, x86_64, i686, riscv64, mips, powerpc, s390x)');
  return { arch: hit[1], machine: hit[2] };
}

const HOST_MACHINE: Record<string, number> = { x64: 62, arm64: 183, ia32: 3, arm: 40, riscv64: 243, s390x: 22, ppc64: 21 };

export function compilerFor(spec: ToolchainSpec): string {
  if (spec.crossCompile) return `${spec.crossCompile}gcc`;
  return spec.libc === 'musl' ? 'musl-gcc' : 'gcc';
}

/**
 * A directory of symlinks to the system's kernel header directories, for musl-gcc, which hides
 * /usr/include (facts.md). Kept at a stable path in the cache so that the .config that names it
 * (and therefore the cache key) does not change from run to run.
 */
export async function muslKernelHeaders(cacheRoot: string): Promise<string> {
  const dir = join(cacheRoot, 'toolchain', 'musl-kernel-headers');
  if (existsSync(join(dir, 'linux'))) return dir;
  const multiarch = ['/usr/include/x86_64-linux-gnu/asm', '/usr/include/aarch64-linux-gnu/asm', '/usr/include/asm'].find((d) => existsSync(d));
  if (!existsSync('/usr/include/linux') || !multiarch) {
    throw new DomuError('musl build: the kernel headers are missing (/usr/include/linux, asm)', { hint: 'apt-get install linux-libc-dev' });
  }
  const tmp = tempPathFor(dir);
  await mkdir(tmp, { recursive: true });
  try {
    await symlink('/usr/include/linux', join(tmp, 'linux'));
    await symlink('/usr/include/asm-generic', join(tmp, 'asm-generic'));
    await symlink(multiarch, join(tmp, 'asm'));
    if (existsSync('/usr/include/mtd')) await symlink('/usr/include/mtd', join(tmp, 'mtd'));
    await mkdir(dirname(dir), { recursive: true });
    await rename(tmp, dir).catch(async (e: NodeJS.ErrnoException) => {
      if (e.code !== 'ENOTEMPTY' && e.code !== 'EEXIST') throw e; // another run made it first
      await rm(tmp, { recursive: true, force: true });
    });
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    throw e;
  }
  return dir;
}

/** Environment variables that change what gcc finds or how it words its version line. */
const GCC_ENV = ['CPATH', 'C_INCLUDE_PATH', 'GCC_EXEC_PREFIX', 'COMPILER_PATH', 'LANG', 'LC_ALL', 'LC_MESSAGES', 'LANGUAGE'];

/**
 * probeToolchain's answer, kept in the cache (core/probememo.ts) while the compiler driver found
 * on PATH, cc1, every header the probe read, and every directory of the include search path
 * (with the subdirectories those headers were found in, present or not) are unchanged: a no-op
 * build starts no compiler. musl-gcc (a wrapper script with a specs file) is always asked.
 */
export async function probeToolchainMemo(env: ExecEnv, cacheRoot: string, spec: ToolchainSpec, extraCflags: string[] = []): Promise<Toolchain> {
  const cc = compilerFor(spec);
  // The driver PATH finds now is part of the key: a gcc put earlier on PATH is another compiler.
  const driver = spec.libc === 'musl' ? undefined : await which(cc);
  if (!driver) return probeToolchain(env, spec, extraCflags);
  const key = { spec: { libc: spec.libc, crossCompile: spec.crossCompile ?? null }, extraCflags, arch: process.arch, driver, env: GCC_ENV.map((v) => process.env[v] ?? null) };
  return memoizedProbe(cacheRoot, 'toolchain', key, async () => {
    const value = await probeToolchain(env, spec, extraCflags);
    // The files the probe reads: the same pass with line markers (`# 1 "/usr/include/features.h"`)
    // and, on stderr, the include search path (-v).
    const marked = await run(env, cc, [...extraCflags, '-v', '-E', '-x', 'c', '-'], { input: PROBE, quiet: true });
    const cc1 = (await run(env, cc, ['-print-prog-name=cc1'], { quiet: true })).stdout.trim();
    const headers = [...new Set([...marked.stdout.matchAll(/^# \d+ "(\/[^"]+)"/gm)].map((m) => m[1]!))];
    const search = includeSearchPath(marked.stderr);
    // Without cc1 found as a file or a search path, nothing proves the answer later: not kept.
    if (!cc1.startsWith('/') || !search.length) return { value, files: [] };
    return { value, files: [driver, cc1, ...probeDependencies(headers, search)] };
  });
}

/** The directories of `gcc -v`'s "#include … search starts here:" lists, in order. */
export function includeSearchPath(stderr: string): string[] {
  const out: string[] = [];
  let inList = false;
  for (const line of stderr.split('\n')) {
    if (/^#include .* search starts here:$/.test(line)) inList = true;
    else if (line === 'End of search list.') inList = false;
    else if (inList && line.startsWith(' /')) out.push(posix.normalize(line.trim().replace(/ \(framework directory\)$/, '')));
  }
  return out;
}

/**
 * What a header lookup depends on: each header and its directory, and in EVERY search directory
 * each subdirectory a header was found in (`linux`, `bits`, …, and the directory itself), whether
 * it exists or not: a header that would shadow one of them has to be created in one of those
 * directories, or create one of the absent ones in a directory that is recorded.
 */
export function probeDependencies(headers: string[], search: string[]): string[] {
  const subdirs = new Set<string>(['']);
  for (const h of headers) {
    // Under every search directory that holds it (/usr/include and /usr/include/x86_64-linux-gnu).
    for (const base of search.filter((d) => h.startsWith(`${d}/`))) {
      const parts = h.slice(base.length + 1).split('/').slice(0, -1);
      for (let i = 1; i <= parts.length; i++) subdirs.add(parts.slice(0, i).join('/'));
    }
  }
  const dirs = search.flatMap((d) => [...subdirs].map((s) => (s ? `${d}/${s}` : d)));
  return [...new Set([...headers, ...headers.map((h) => posix.dirname(h)), ...dirs])];
}

// One preprocessor pass answers both questions for this compiler and these flags.
const PROBE = [
  '#include <features.h>',
  '#include <linux/pkt_sched.h>',
  'DOMU_GLIBC __GLIBC__ __GLIBC_MINOR__',
  '#ifdef TCA_CBQ_MAX',
  'DOMU_HAS_TCA_CBQ_MAX',
  '#endif',
  '',
].join('\n');

export async function probeToolchain(env: ExecEnv, spec: ToolchainSpec, extraCflags: string[] = []): Promise<Toolchain> {
  const cc = compilerFor(spec);
  const hint = spec.crossCompile
    ? `install the cross compiler (e.g. apt-get install gcc-${spec.crossCompile.replace(/-$/, '')})`
    : spec.libc === 'musl'
      ? 'apt-get install musl-tools'
      : 'apt-get install gcc libc6-dev';
  const version = await run(env, cc, ['--version'], { missingHint: hint, quiet: true });
  const pre = await run(env, cc, [...extraCflags, '-E', '-P', '-x', 'c', '-'], { input: PROBE, quiet: true });
  const m = /DOMU_GLIBC (\d+) (\d+)/.exec(pre.stdout);
  const target = spec.crossCompile ? crossTarget(spec.crossCompile) : undefined;
  const machine = target?.machine ?? HOST_MACHINE[process.arch];
  if (machine === undefined) throw new DomuError(`unsupported host architecture ${process.arch}`);
  return {
    cc,
    ccVersion: version.stdout.split('\n')[0] ?? '',
    libc: spec.libc,
    crossCompile: spec.crossCompile,
    arch: target?.arch,
    machine,
    glibc: m && spec.libc === 'glibc' ? { major: Number(m[1]), minor: Number(m[2]) } : undefined,
    hasTcaCbqMax: /\bDOMU_HAS_TCA_CBQ_MAX\b/.test(pre.stdout),
  };
}

export function glibcAtLeast(t: Toolchain, major: number, minor: number): boolean {
  return !!t.glibc && (t.glibc.major > major || (t.glibc.major === major && t.glibc.minor >= minor));
}
