// The compat header and the toolchain probe, with the real compilers of this machine.
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readElfFile } from '../../src/kernel/elf.js';
import { ExecError, run, which } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { crossTarget, glibcAtLeast, muslKernelHeaders, probeToolchain } from '../../src/busybox/toolchain.js';
import { COMPAT_HEADER } from '../../src/pipeline/plan.js';
import { makeVariables } from '../../src/stages/kconfig.js';
import { tempDir } from '../helpers/context.js';

const env = { log: memoryLogger(), signal: new AbortController().signal };
let dir: string;

/** Whether the installed kernel headers (linux-libc-dev) define TCA_CBQ_MAX: read from the file itself. */
async function headerDefinesTcaCbqMax(include = '/usr/include'): Promise<boolean> {
  return /^[ \t]*#[ \t]*define[ \t]+TCA_CBQ_MAX\b/m.test(await readFile(join(include, 'linux', 'pkt_sched.h'), 'utf8'));
}

beforeAll(async () => {
  dir = await tempDir('domu-cc-');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

// Calls stime() the way busybox 1.22.1's date.c does, and has a struct member named stime as
// procps code does (the function-like macro must leave it alone).
const PROGRAM = `
#include <stdio.h>
#include <time.h>
#include <errno.h>
struct cpu { unsigned long utime, stime; };
int main(void) {
  struct cpu c = { 1, 2 };
  time_t t = time(NULL);
  int r = stime(&t);              /* EPERM unless root: either way it links and runs */
  printf("stime=%d member=%lu\\n", r == 0 || errno == EPERM ? 0 : -1, c.stime);
  return 0;
}
`;

describe('the stime() compat header', () => {
  it('makes a program calling stime() compile and link statically against this glibc', async () => {
    const probe = await probeToolchain(env, { libc: 'glibc' });
    expect(glibcAtLeast(probe, 2, 31)).toBe(true); // this machine is the case the header is for
    await writeFile(join(dir, 'st.c'), PROGRAM);
    // Without the header the program does not build on glibc >= 2.31 ...
    const bare = await run(env, 'gcc', ['-static', '-o', join(dir, 'bare'), join(dir, 'st.c')]).catch((e: unknown) => e as ExecError);
    expect(bare).toBeInstanceOf(ExecError);
    expect((bare as ExecError).stderr).toMatch(/stime/);
    // ... with it, it does, statically.
    await run(env, 'gcc', ['-static', '-include', COMPAT_HEADER, '-o', join(dir, 'st'), join(dir, 'st.c')]);
    expect((await readElfFile(join(dir, 'st'))).isStatic()).toBe(true);
    const r = await run(env, join(dir, 'st'), []);
    expect(r.stdout).toBe('stime=0 member=2');
  });

  it('is inert where glibc still has stime() (< 2.31)', async () => {
    const fake = join(dir, 'old-glibc');
    await mkdir(fake, { recursive: true });
    await writeFile(join(fake, 'features.h'), '#define __GLIBC__ 2\n#define __GLIBC_MINOR__ 30\n');
    const pre = await run(env, 'gcc', ['-I', fake, '-E', '-P', '-x', 'c', '-'], { input: `#include "${COMPAT_HEADER}"\n#ifdef stime\nSHIM_ACTIVE\n#endif\n` });
    expect(pre.stdout).not.toContain('SHIM_ACTIVE');
    expect(pre.stdout).not.toContain('domu_compat_stime');
  });

  it.skipIf(!existsSync('/usr/bin/musl-gcc'))('is inert under musl, which has stime(): the program links with musl\'s own', async () => {
    await writeFile(join(dir, 'st.c'), PROGRAM);
    await run(env, 'musl-gcc', ['-static', '-include', COMPAT_HEADER, '-o', join(dir, 'st-musl'), join(dir, 'st.c')]);
    const pre = await run(env, 'musl-gcc', ['-E', '-P', '-x', 'c', '-'], { input: `#include "${COMPAT_HEADER}"\n#ifdef stime\nSHIM_ACTIVE\n#endif\n` });
    expect(pre.stdout).not.toContain('SHIM_ACTIVE');
    expect((await run(env, join(dir, 'st-musl'), [])).stdout).toBe('stime=0 member=2');
  });
});

describe('toolchain probe', () => {
  it('reads glibc and TCA_CBQ_MAX through the compiler itself', async () => {
    const t = await probeToolchain(env, { libc: 'glibc' });
    expect(t.cc).toBe('gcc');
    expect(t.ccVersion).toMatch(/^gcc /);
    expect(t.glibc?.major).toBe(2);
    expect(t.machine).toBe(62);
    expect(t.hasTcaCbqMax).toBe(await headerDefinesTcaCbqMax()); // Linux < 6.8 headers have it, later ones not
  });

  it('notices kernel headers without TCA_CBQ_MAX (Linux >= 6.8)', async () => {
    const fake = join(dir, 'new-kernel', 'linux');
    await mkdir(fake, { recursive: true });
    await writeFile(join(fake, 'pkt_sched.h'), '/* Linux 6.8 dropped CBQ */\n#define TCA_HFSC_MAX 3\n');
    const t = await probeToolchain(env, { libc: 'glibc' }, ['-I', join(dir, 'new-kernel')]);
    expect(t.hasTcaCbqMax).toBe(false);
  });

  it('names the package to install when the compiler is missing', async () => {
    await expect(probeToolchain(env, { libc: 'glibc', crossCompile: 'riscv64-nosuch-linux-gnu-' })).rejects.toThrow(/program not found: riscv64-nosuch-linux-gnu-gcc/);
  });

  it('maps cross prefixes to kbuild ARCH and ELF machine, and rejects unknown CPUs', () => {
    expect(crossTarget('aarch64-linux-gnu-')).toEqual({ arch: 'arm64', machine: 183 });
    expect(crossTarget('arm-linux-gnueabihf-')).toEqual({ arch: 'arm', machine: 40 });
    expect(crossTarget('riscv64-linux-gnu-')).toEqual({ arch: 'riscv', machine: 243 });
    expect(() => crossTarget('vax-linux-gnu-')).toThrow(/unknown target CPU "vax"/);
  });

  it.skipIf(!existsSync('/usr/bin/musl-gcc'))('musl builds use musl-gcc and the ifplugd fix; glibc builds need no make variables', async () => {
    const glibc = await probeToolchain(env, { libc: 'glibc' });
    expect(makeVariables(glibc)).toEqual([]);
    expect(await which('musl-gcc')).toBeTruthy();
    const headers = await muslKernelHeaders(join(dir, 'cache'));
    const musl = await probeToolchain(env, { libc: 'musl' }, ['-idirafter', headers]);
    expect(musl.hasTcaCbqMax).toBe(await headerDefinesTcaCbqMax(headers)); // found through the symlinked kernel headers
    expect(musl.glibc).toBeUndefined();
    expect(makeVariables(musl)).toEqual(['CC=musl-gcc', 'CFLAGS_ifplugd.o=-include netinet/if_ether.h']);
  });
});
