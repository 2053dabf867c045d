// Benchmark and check (issue 13): the reference lab's busybox 1.22.1, built through the CLI from
// ../shared/sources (the copy of domu whose releases table vouches for that file, as in
// test/e2e/busybox-1.22.1.test.ts) with each C library, then booted with `domu verify`. The test
// suite builds and boots the glibc one in every run; musl is here, where its few minutes of
// compile do not count against the suite's time. Reports the compile stage's time, the binary's
// size and applets, and the boot's time to the ready marker; fails on anything the test checks.
//
//   npm run bench -- busybox-1.22.1          (BENCH_LIBC=glibc,musl by default)
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import type { VerifyOutput } from '../src/stages/verify.js';
import { TEST_CACHE_DIR } from '../test/helpers/busybox-tarball.js';
import { domuJson, stage } from '../test/helpers/cli.js';
import { tempDir } from '../test/helpers/context.js';
import { getKernelPackage } from '../test/helpers/kernel-package.js';
import { BUSYBOX_1_22_1_GIT, busybox1221Missing, removeVouchedProject, vouchedProjectRoot } from '../test/helpers/vouched-domu.js';

export interface Busybox1221Figures {
  libc: string;
  compileS: number;
  compileCached: boolean;
  bytes: number;
  applets: number;
  toMarkerS: number;
}

function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`busybox 1.22.1: ${what}`);
}

export async function benchBusybox1221(libc: string): Promise<Busybox1221Figures> {
  const root = await vouchedProjectRoot();
  const kernel = await getKernelPackage();
  const dir = await tempDir('domu-bench-1.22.1-');
  try {
    const out = join(dir, 'out');
    const b = await domuJson(['build', '--json', '--config', join(root, 'guest.yaml'), '--cache-dir', TEST_CACHE_DIR, '--out', out, '--busybox-version', '1.22.1', '--strict-version', '--source', BUSYBOX_1_22_1_GIT.path, '--set', `kernel.image=${kernel.image}`, '--set', `busybox.libc=${libc}`, '--jobs', '2'], { root });
    check(b.r.exitCode === 0, `build with ${libc} failed: ${b.r.stderr}`);
    check((b.s.substitutions ?? []).length === 0, `a substitution: ${JSON.stringify(b.s.substitutions)}`);
    const compile = stage(b.s, 'compile');
    const { binary, applets } = compile.outputs as { binary: string; applets: number };
    check(!/INTERP/.test((await execa('readelf', ['-lW', binary])).stdout), `${binary} is not static`);
    const banner = await execa(binary, [], { reject: false });
    check(/^BusyBox v1\.22\.1 /m.test(`${banner.stdout}${banner.stderr}`), 'no BusyBox v1.22.1 banner');
    const listed = (await execa(binary, ['--list'])).stdout.split('\n').filter(Boolean).length;
    check(listed === applets, `--list has ${listed} applets, the compile stage said ${applets}`);
    const v = await domuJson(['verify', '--quick', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR], { root });
    check(v.r.exitCode === 0, `domu verify failed: ${v.r.stderr}`);
    const vo = stage(v.s, 'verify').outputs as unknown as VerifyOutput;
    check(vo.applets.found === listed, `the guest found ${vo.applets.found} applets, not ${listed}`);
    const record = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as { busybox: { resolvedVersion: string } };
    check(record.busybox.resolvedVersion === '1.22.1', `build.json says ${record.busybox.resolvedVersion}`);
    return { libc, compileS: compile.ms / 1000, compileCached: compile.cacheHit, bytes: (await stat(binary)).size, applets: listed, toMarkerS: vo.secondsToMarker };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export async function reportBusybox1221Bench(): Promise<void> {
  const missing = busybox1221Missing();
  if (missing) {
    console.log(`busybox-1.22.1: not run: ${missing}\n`);
    return;
  }
  const libcs = (process.env.BENCH_LIBC ?? 'glibc,musl').split(',');
  console.log(`busybox-1.22.1: ${BUSYBOX_1_22_1_GIT.path} (upstream's git tag), built and booted with ${libcs.join(' and ')}`);
  const rows: Busybox1221Figures[] = [];
  try {
    for (const libc of libcs) rows.push(await benchBusybox1221(libc));
  } finally {
    await removeVouchedProject();
  }
  console.log('');
  console.log('| libc  | compile stage s | static binary bytes | applets | verify: to marker s |');
  console.log('| ----- | --------------- | ------------------- | ------- | ------------------- |');
  for (const r of rows) console.log(`| ${r.libc.padEnd(5)} | ${`${r.compileS.toFixed(1)}${r.compileCached ? ' (cached)' : ''}`.padStart(15)} | ${String(r.bytes).padStart(19)} | ${String(r.applets).padStart(7)} | ${r.toMarkerS.toFixed(1).padStart(19)} |`);
  console.log('');
}
