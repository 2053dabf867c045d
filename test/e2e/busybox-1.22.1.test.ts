// The reference lab's busybox, 1.22.1 (the version guest.yaml names), built and booted in every
// test run: from ../shared/sources (upstream's git tag; the official tarball cannot be downloaded
// here) through the CLI with the project's fragment, compat header and make variables unchanged.
// The real domu refuses that file as 1.22.1 (it is not the pinned tarball, and --sha256 cannot
// override a pin); a copy of domu whose releases table vouches for it builds it
// (test/helpers/vouched-domu.ts). Checked: a static binary with the 1.22.1 banner and its applets,
// no substitution anywhere, and a boot under `domu verify` that finds every applet. With glibc
// here; bench/busybox-1.22.1.ts does the same with musl too.
import { readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { which } from '../../src/core/exec.js';
import type { BuildRecord } from '../../src/model/buildrecord.js';
import type { VerifyOutput } from '../../src/stages/verify.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { domu, domuJson, stage, type Summary } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { BUSYBOX_1_22_1_GIT, busybox1221Missing, removeVouchedProject, vouchedProjectRoot } from '../helpers/vouched-domu.js';

/** busybox 1.22.1 with busybox-config/static.fragment: the applets its .config selects (same for every libc). */
const APPLETS_1_22_1 = 354;

const missing = busybox1221Missing() ?? ((await which('qemu-system-x86_64')) ? undefined : 'qemu-system-x86_64 not found on PATH (scripts/setup.sh installs qemu-system-x86)');
if (missing) console.warn(`busybox-1.22.1: SKIPPING: ${missing}`);

let dir: string;
let root: string;
let kernelImage: string;

beforeAll(async () => {
  if (missing) return;
  dir = await tempDir('domu-1.22.1-');
  root = await vouchedProjectRoot();
  // The kernel from the shared test cache, named by path: the only provenance note left would be
  // busybox's, and there must be none.
  kernelImage = (await getKernelPackage()).image;
}, 600_000);
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  await removeVouchedProject();
});

const args = (out: string, extra: string[] = []) => [
  '--config', join(root, 'guest.yaml'), '--cache-dir', TEST_CACHE_DIR, '--out', out,
  '--busybox-version', '1.22.1', '--strict-version', '--source', BUSYBOX_1_22_1_GIT.path,
  '--set', `kernel.image=${kernelImage}`, '--jobs', '2', ...extra,
];

const seconds = (ms: number) => (ms / 1000).toFixed(1);

describe.skipIf(missing)('busybox 1.22.1, the reference lab\'s version', () => {
  it('the real domu refuses the git-tag tarball as 1.22.1: the pin stays, --sha256 cannot override it', async () => {
    const work = join(dir, 'refused');
    const plain = await domu(['fetch', '--busybox-version', '1.22.1', '--strict-version', '--source', BUSYBOX_1_22_1_GIT.path, '--cache-dir', join(work, 'cache')]);
    expect(plain.exitCode).not.toBe(0);
    expect(plain.stderr).toMatch(new RegExp(`^domu fetch: error: sha256 mismatch for .*busybox-1\\.22\\.1\\.tar\\.bz2: expected ae0b029d0a9e4dd71a077a790840e496dd838998e4571b87b60fed7462b6678b, got ${BUSYBOX_1_22_1_GIT.sha256}`, 'm'));
    const overridden = await domu(['fetch', '--busybox-version', '1.22.1', '--strict-version', '--sha256', BUSYBOX_1_22_1_GIT.sha256, '--source', BUSYBOX_1_22_1_GIT.path, '--cache-dir', join(work, 'cache')]);
    expect(overridden.exitCode).toBe(2);
    expect(overridden.stderr).toMatch(/^domu fetch: error: --sha256 for busybox 1\.22\.1 differs from the pinned hash ae0b029d/m);
    // Only the vouched copy's table differs, and only in that line.
    const mine = await readFile(join(root, 'busybox-config', 'releases.hash'), 'utf8');
    const project = await readFile(new URL('../../busybox-config/releases.hash', import.meta.url), 'utf8');
    const diff = mine.split('\n').filter((l, i) => l !== project.split('\n')[i]);
    expect(diff).toEqual([`sha256  ${BUSYBOX_1_22_1_GIT.sha256}  busybox-1.22.1.tar.bz2`]);
  }, 120_000);

  // glibc in every run; musl (the same checks, a few more minutes of compile) in
  // `npm run bench -- busybox-1.22.1`, which builds and boots both.
  for (const libc of ['glibc'] as const) {
    describe(`with ${libc}`, () => {
      let out: string;
      let build: { r: Awaited<ReturnType<typeof domu>>; s: Summary };
      let binary: string;

      it('builds through the CLI: static, the 1.22.1 banner, every applet, no substitution', async () => {
        out = join(dir, `out-${libc}`);
        build = await domuJson(['build', '--json', ...args(out, ['--set', `busybox.libc=${libc}`])], { root });
        expect(build.r.exitCode, build.r.stderr).toBe(0);
        const s = build.s;
        // No substitution in the summary, the JSON stages or the record.
        expect(s.substitutions).toEqual([]);
        const source = stage(s, 'source').outputs as { resolvedVersion: string; substitution: unknown; sha256: string };
        expect(source.resolvedVersion).toBe('1.22.1');
        expect(source.substitution).toBeNull();
        expect(source.sha256).toBe(BUSYBOX_1_22_1_GIT.sha256);
        const rec = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as BuildRecord;
        expect([rec.busybox.requestedVersion, rec.busybox.resolvedVersion]).toEqual(['1.22.1', '1.22.1']);
        expect(rec.busybox.tarballSha256).toBe(BUSYBOX_1_22_1_GIT.sha256);
        expect(rec.busybox.applets).toBe(APPLETS_1_22_1);
        expect(rec.busybox.substitution ?? null).toBeNull();

        const compile = stage(s, 'compile');
        const c = compile.outputs as { binary: string; applets: number; static: boolean; bytes?: number };
        binary = c.binary;
        // Static, checked with binutils rather than our own ELF reader: no interpreter, no dynamic section.
        const headers = await execa('readelf', ['-lW', binary]);
        expect(headers.stdout).toMatch(/Elf file type is EXEC|Elf file type is DYN/);
        expect(headers.stdout).not.toMatch(/INTERP/);
        expect((await execa('readelf', ['-d', binary])).stdout).toMatch(/There is no dynamic section/);
        const banner = await execa(binary, [], { reject: false });
        expect(`${banner.stdout}${banner.stderr}`).toMatch(/^BusyBox v1\.22\.1 /m);
        const list = (await execa(binary, ['--list'])).stdout.split('\n').filter(Boolean);
        expect(list.length).toBe(APPLETS_1_22_1);
        expect(c.applets).toBe(APPLETS_1_22_1);
        const { size } = await stat(binary);
        console.log(`busybox 1.22.1 (${libc}): compile stage ${seconds(compile.ms)} s${compile.cacheHit ? ' (cached)' : ''}, static binary ${size} bytes, ${list.length} applets`);
      }, 900_000);

      it('boots under domu verify and finds every applet', async () => {
        expect(build?.r.exitCode).toBe(0);
        const { r, s } = await domuJson(['verify', '--quick', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR], { root });
        expect(r.exitCode, `${r.stderr}\n${r.stdout}`).toBe(0);
        const v = stage(s, 'verify').outputs as unknown as VerifyOutput;
        expect(v.ok).toBe(true);
        expect(v.applets).toEqual({ found: APPLETS_1_22_1, expected: APPLETS_1_22_1 });
        // Under plain QEMU there is no Xen bus: the module is accepted and finds no device.
        expect(v.modules).toEqual([{ name: 'xen_netfront', verdict: 'no-device', detail: expect.stringMatching(/No such device/) }]);
        console.log(`busybox 1.22.1 (${libc}): domu verify marker after ${v.secondsToMarker.toFixed(1)} s (${v.accel}), whole check ${v.seconds.toFixed(1)} s`);
      }, 300_000);
    });
  }
});
