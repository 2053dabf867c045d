// `domu release` for real: busybox 1.35.0 built once into --out (shared test cache: seconds when
// the compile is cached), then released, checked with sha256sum -c, tar, zstd and cmp; released
// twice for byte-identity; refused for a changed --out and a missing build.json.
import { chmod, copyFile, mkdir, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import type { BuildRecord } from '../../src/model/buildrecord.js';
import { sha256File } from '../../src/core/hash.js';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { domuJson, stage } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';

// Set by beforeAll: scratch directory, tarball, description, the build in --out, its record, the release name.
let dir: string, tarball: string, guest: string, out: string;
let record: BuildRecord, name: string;

beforeAll(async () => {
  tarball = await getBusyboxTarball();
  const kernel = await getKernelPackage();
  dir = await tempDir('domu-release-');
  guest = join(dir, 'guest.yaml');
  out = join(dir, 'out');
  await writeFile(guest, `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernel.image}\n`);
  await build(out);
  record = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as BuildRecord;
  name = `busybox-1.35.0-${record.buildHash.slice(0, 12)}`;
}, 600_000);
async function build(to: string): Promise<void> {
  const b = await domuJson(['build', '--json', '--config', guest, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', to]);
  expect(b.r.exitCode, b.r.stderr).toBe(0);
}

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const release = (from: string, dist: string, config = guest) => domuJson(['release', '--json', '--config', config, '--cache-dir', join(dir, 'cache'), '--out', from, '--dist', dist]);

interface Manifest {
  format: string;
  name: string;
  guest: string;
  buildHash: string;
  sourceDateEpoch: number;
  busybox: Record<string, unknown>;
  kernel: BuildRecord['kernel'];
  modules: { name: string; vermagic: string }[];
  ramdiskModules: string[];
  tools: Record<string, string>;
  releasedWith: Record<string, string>;
  image: { name: string; sha256: string; bytes: number; raw: { name: string; sha256: string; apparentBytes: number }; restore: { argv: string[]; command: string } };
  boot: { kernel: { name: string; sha256: string; storePath: string } | null; ramdisk: { name: string; sha256: string; storePath: string } | null };
  configs: { name: string; sha256: string; files: { path: string; sha256: string }[]; restore: { command: string } };
  description: unknown;
}

/** A copy of --out (the image stays sparse) to tamper with. */
async function copyOut(to: string): Promise<string> {
  await execa('cp', ['-a', '--sparse=always', out, to]);
  return to;
}

async function sameDir(a: string, b: string): Promise<void> {
  const names = (await readdir(a)).sort();
  expect((await readdir(b)).sort()).toEqual(names);
  for (const n of names) {
    const [sa, sb] = [await stat(join(a, n)), await stat(join(b, n))];
    expect([sb.mode, sb.mtimeMs], n).toEqual([sa.mode, sa.mtimeMs]);
    expect((await readFile(join(b, n))).equals(await readFile(join(a, n))), n).toBe(true);
  }
}

describe('domu release of a real build', () => {
  let rel: string;
  let manifest: Manifest;

  it('writes the compressed image, kernel, ramdisk, configs tarball, manifest and SHA256SUMS', async () => {
    const dist = join(dir, 'dist1');
    const { r, s } = await release(out, dist);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.stages.map((x) => x.name)).toEqual(['check', 'release']);
    expect(s.warnings).toEqual([]);
    rel = join(dist, name);
    expect(stage(s, 'release').outputs).toMatchObject({ name, dir: rel, status: 'created', buildHash: record.buildHash });
    expect(await readdir(dist)).toEqual([name]); // no temporary left beside it
    const kernel = record.boot.kernel!.path.replace(/^boot\//, '');
    const ramdisk = record.boot.ramdisk!.path.replace(/^boot\//, '');
    expect((await readdir(rel)).sort()).toEqual(['SHA256SUMS', 'busybox.img.zst', 'configs.tar.gz', kernel, 'manifest.json', ramdisk].sort());

    const check = await execa('sha256sum', ['-c', '--strict', 'SHA256SUMS'], { cwd: rel, reject: false });
    expect(check.exitCode, check.stderr).toBe(0);
    const listed = (await readFile(join(rel, 'SHA256SUMS'), 'utf8')).trim().split('\n').map((l) => l.split('  ')[1]);
    expect(listed).toEqual((await readdir(rel)).filter((n) => n !== 'SHA256SUMS').sort());
    for (const n of await readdir(rel)) {
      const st = await stat(join(rel, n));
      expect([st.mode & 0o7777, st.mtimeMs / 1000], n).toEqual([0o644, record.sourceDateEpoch]);
    }
    manifest = JSON.parse(await readFile(join(rel, 'manifest.json'), 'utf8')) as Manifest;
  }, 120_000);

  it('the manifest holds build.json\'s provenance and the real files\' hashes', async () => {
    const b = record.busybox;
    expect(manifest).toMatchObject({ format: 'domu-release/1', name, guest: 'busybox', buildHash: record.buildHash, sourceDateEpoch: record.sourceDateEpoch });
    expect(manifest.busybox).toEqual({
      requestedVersion: '1.35.0',
      resolvedVersion: '1.35.0',
      origin: b.origin,
      substitution: b.substitution,
      tarballSha256: 'faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694',
      configSha256: b.configSha256,
      applets: b.applets,
    });
    expect(manifest.kernel).toEqual(record.kernel);
    expect(manifest.modules.map((m) => [m.name, m.vermagic])).toEqual(record.modules.map((m) => [m.name, m.vermagic]));
    expect(manifest.modules.map((m) => m.vermagic)).toEqual(manifest.modules.map(() => record.kernel!.release));
    expect(manifest.ramdiskModules).toEqual(record.ramdiskModules);
    expect(manifest.tools).toEqual(record.tools);
    expect(manifest.description).toEqual(record.description);
    expect(manifest.releasedWith.zstd).toMatch(/^\d+\.\d+/);

    // The raw image's sha256, computed here by another program, is the recorded one.
    const raw = (await execa('sha256sum', [join(out, 'busybox.img')])).stdout.split(' ')[0];
    expect(manifest.image.raw).toMatchObject({ name: 'busybox.img', sha256: raw, apparentBytes: 1 << 30 });
    expect(raw).toBe(record.image.sha256);
    expect(manifest.image.sha256).toBe(await sha256File(join(rel, 'busybox.img.zst')));
    expect(manifest.image.bytes).toBe((await stat(join(rel, 'busybox.img.zst'))).size);
    for (const k of ['kernel', 'ramdisk'] as const) {
      const m = manifest.boot[k]!;
      const inOut = join(out, m.storePath);
      expect(m.sha256, k).toBe(await sha256File(inOut));
      expect(m.sha256, k).toBe(record.boot[k]!.sha256);
      expect(m.sha256, k).toBe(await sha256File(join(rel, m.name)));
    }
    expect(manifest.configs.sha256).toBe(await sha256File(join(rel, 'configs.tar.gz')));
    expect(manifest.configs.files.map((f) => f.path)).toEqual([...record.configs].sort());
    for (const f of manifest.configs.files) expect(f.sha256, f.path).toBe(await sha256File(join(out, f.path)));
    expect(manifest.configs.restore.command).toBe('tar -xzf configs.tar.gz -C /scsistore');
  });

  it('the configs tarball is sorted, root-owned, stamped with SOURCE_DATE_EPOCH, and holds the configs of --out', async () => {
    const tgz = await readFile(join(rel, 'configs.tar.gz'));
    expect(tgz.readUInt32LE(4)).toBe(0); // no gzip timestamp
    const listing = (await execa('tar', ['--numeric-owner', '--utc', '--full-time', '-tvzf', join(rel, 'configs.tar.gz')])).stdout.split('\n');
    const names = listing.map((l) => l.split(/\s+/).at(-1)!);
    expect(names).toEqual([...names].sort());
    const files = [...record.configs].sort();
    expect(names.filter((n) => !n.endsWith('/'))).toEqual(files);
    const when = new Date(record.sourceDateEpoch * 1000).toISOString().replace('T', ' ').replace(/\.\d+Z$/, '');
    for (const l of listing) {
      expect(l, l).toMatch(l.endsWith('/') ? /^drwxr-xr-x 0\/0 / : /^-rw-r--r-- 0\/0 /);
      expect(l, l).toContain(when);
    }
    const x = join(dir, 'configs-x');
    await mkdir(x);
    await execa('tar', ['-xzf', join(rel, 'configs.tar.gz'), '-C', x]);
    for (const f of files) expect((await readFile(join(x, f))).equals(await readFile(join(out, f))), f).toBe(true);
  });

  it('the manifest\'s restore command gives back the image byte-identical and sparse', async () => {
    const scratch = join(dir, 'restore');
    await mkdir(scratch);
    await copyFile(join(rel, manifest.image.name), join(scratch, manifest.image.name));
    expect(manifest.image.restore.command).toBe('zstd -d --sparse busybox.img.zst -o busybox.img');
    const [tool, ...args] = manifest.image.restore.argv;
    await execa(tool!, args, { cwd: scratch });
    const restored = join(scratch, 'busybox.img');
    const st = await stat(restored);
    expect(st.size).toBe(1 << 30);
    expect(st.blocks * 512).toBeLessThanOrEqual(record.image.allocatedBytes);
    const cmp = await execa('cmp', [restored, join(out, 'busybox.img')], { reject: false });
    expect(cmp.exitCode, cmp.stdout).toBe(0);
  }, 120_000);

  it('a second release of the same build is byte-identical; into the same dist it is already there', async () => {
    const dist2 = join(dir, 'dist2');
    const again = await release(out, dist2);
    expect(again.r.exitCode, again.r.stderr).toBe(0);
    await sameDir(rel, join(dist2, name));
    expect((await execa('sha256sum', ['-c', 'SHA256SUMS'], { cwd: join(dist2, name) })).exitCode).toBe(0);

    const there = await release(out, join(dir, 'dist1'));
    expect(there.r.exitCode, there.r.stderr).toBe(0);
    expect(stage(there.s, 'release').outputs.status).toBe('already there');
    expect(there.r.stderr).toMatch(/already there, identical/);
    expect(await readdir(join(dir, 'dist1'))).toEqual([name]);
  }, 120_000);

  it('a rebuild of the same inputs in another --out is the same release, whatever provider it got the tarball from', async () => {
    const out2 = join(dir, 'out2');
    await build(out2);
    const rec2 = JSON.parse(await readFile(join(out2, 'build.json'), 'utf8')) as BuildRecord;
    expect(rec2.buildHash).toBe(record.buildHash);
    rec2.busybox.provider = rec2.busybox.provider === 'local' ? 'cache' : 'local'; // outside the build hash
    await writeFile(join(out2, 'build.json'), JSON.stringify(rec2, null, 2));
    const { r, s } = await release(out2, join(dir, 'dist1'));
    expect(r.exitCode, r.stderr).toBe(0);
    expect(stage(s, 'release').outputs.status).toBe('already there');
  }, 300_000);

  it('a description file that differs from the recorded one is a warning; the recorded build is released', async () => {
    const other = join(dir, 'other.yaml');
    await writeFile(other, `${await readFile(guest, 'utf8')}guest:\n  memory: 1024\n`);
    const { r, s } = await release(out, join(dir, 'dist-other'), other);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.warnings.map((w) => w.message)).toEqual([expect.stringMatching(/differs from the one .* was built with: releasing the build as recorded/)]);
    await sameDir(rel, join(dir, 'dist-other', name));
  }, 120_000);

  it('an existing release directory of that name with other content is an error and is left alone', async () => {
    const dist = join(dir, 'dist3');
    await mkdir(join(dist, name), { recursive: true });
    await writeFile(join(dist, name, 'SHA256SUMS'), 'not this release\n');
    const { r, s } = await release(out, dist);
    expect(r.exitCode).toBe(1);
    expect(s.error?.message).toMatch(new RegExp(`${name} already exists and is not this release`));
    expect(await readdir(join(dist, name))).toEqual(['SHA256SUMS']);
    expect(await readFile(join(dist, name, 'SHA256SUMS'), 'utf8')).toBe('not this release\n');
    expect(await readdir(dist)).toEqual([name]);
  }, 120_000);
});

describe('a build that does not match its build.json is never released', () => {
  it('a changed byte in the image (inside a hole) is refused before anything is written', async () => {
    const copy = await copyOut(join(dir, 'out-image'));
    const fh = await open(join(copy, 'busybox.img'), 'r+');
    await fh.write(Buffer.from('x'), 0, 1, 512 << 20);
    await fh.close();
    const dist = join(dir, 'dist-image');
    const { r, s } = await release(copy, dist);
    expect(r.exitCode).toBe(1);
    expect(s.error?.message).toMatch(/busybox\.img has sha256 [0-9a-f]{64}, build\.json records/);
    expect(s.error?.message).toMatch(/changed after `domu build` recorded it/);
    expect(s.error?.hint).toMatch(/domu build --out/);
    expect(stage(s, 'release').status).toBe('skipped');
    expect(await readdir(dist).catch(() => [])).toEqual([]);
  }, 120_000);

  it('an edited config and a replaced kernel are refused', async () => {
    const copy = await copyOut(join(dir, 'out-config'));
    await writeFile(join(copy, 'xen/test1/busybox.cfg'), 'memory = 4096\n', { flag: 'a' });
    const c = await release(copy, join(dir, 'dist-config'));
    expect(c.r.exitCode).toBe(1);
    expect(c.s.error?.message).toMatch(/xen\/test1\/busybox\.cfg was edited/);

    const copy2 = await copyOut(join(dir, 'out-kernel'));
    const k = join(copy2, record.boot.kernel!.path);
    await chmod(k, 0o644);
    await writeFile(k, 'another kernel');
    const kr = await release(copy2, join(dir, 'dist-kernel'));
    expect(kr.r.exitCode).toBe(1);
    expect(kr.s.error?.message).toMatch(/vmlinuz-.* has sha256 [0-9a-f]{64}, build\.json records/);
  }, 120_000);

  it('missing build.json: a clear error that says to run domu build', async () => {
    const copy = await copyOut(join(dir, 'out-norecord'));
    await rm(join(copy, 'build.json'));
    const { r, s } = await release(copy, join(dir, 'dist-norecord'));
    expect(r.exitCode).toBe(1);
    expect(s.error?.message).toMatch(/no build to release in .*out-norecord: build\.json is missing/);
    expect(s.error?.hint).toMatch(/run `domu build --out .*out-norecord` first/);
    expect(r.stderr).toMatch(/hint: run `domu build/);

    // An edited record is not trusted either.
    const edited = await copyOut(join(dir, 'out-edited'));
    const rec = JSON.parse(await readFile(join(edited, 'build.json'), 'utf8')) as BuildRecord;
    rec.busybox.resolvedVersion = '1.36.1';
    await writeFile(join(edited, 'build.json'), JSON.stringify(rec));
    const e = await release(edited, join(dir, 'dist-edited'));
    expect(e.r.exitCode).toBe(1);
    expect(e.s.error?.message).toMatch(/build\.json was edited after the build/);
  }, 120_000);
});
