// End to end, as an administrator runs it: a cold build with the project's own guest.yaml from
// Debian's archives (busybox from the source archive, the kernel package, both into a fresh
// cache), `domu verify` proving the result on Debian's real Xen nested in QEMU (Xen fetched into
// that cache too), two `domu release` runs compared byte for byte, and a second build that is
// fully cached and leaves the image untouched.
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import type { BuildRecord } from '../../src/model/buildrecord.js';
import { domuJson, stage } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { identities, XEN_TEST_TIMEOUT } from '../helpers/xen-guest.js';

let dir: string;
let out: string;
let cache: string;

beforeAll(async () => {
  dir = await tempDir('domu-e2e-');
  out = join(dir, 'out');
  cache = join(dir, 'cache');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const config = join(PROJECT_ROOT, 'guest.yaml');
const build = () => domuJson(['build', '--json', '--config', config, '--cache-dir', cache, '--out', out, '--jobs', '2']);

describe('from nothing to a booting guest', () => {
  it('a cold build of the default guest.yaml fills out/ and says where busybox and the kernel came from', async () => {
    const { r, s } = await build();
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.stages.every((x) => !x.cacheHit || x.name === 'kernel' || x.name === 'modules')).toBe(true);
    const names = (await readdir(out)).sort();
    expect(names).toEqual(['boot', 'build.json', 'busybox.img', 'hosts', 'storage', 'xen']);
    expect((await readdir(join(out, 'xen', 'test1')))).toEqual(['busybox.cfg']);
    expect((await readdir(join(out, 'xen', 'test2')))).toEqual(['busybox.cfg']);
    const paths = s.artifacts!.map((a) => a.path);
    expect(paths).toContain(join(out, 'busybox.img'));
    expect(paths.some((p) => /\/boot\/vmlinuz-/.test(p))).toBe(true);
    expect(paths.some((p) => /\/boot\/initrd-.*-busybox\.gz$/.test(p))).toBe(true);
    for (const a of s.artifacts!) expect(a.sha256, a.path).toMatch(/^[0-9a-f]{64}$/);
    // The default asks for busybox 1.22.1, which this archive does not carry: said in plain words.
    expect(s.substitutions!.join('\n')).toMatch(/busybox 1\.35\.0 was built instead of the requested 1\.22\.1/);
    expect(s.substitutions!.join('\n')).toMatch(/is Debian's package linux-image-/);
    // The guest as Xen starts it (issue 15): PVH, console=hvc0, the real init, eth0's address.
    const record = JSON.parse(await readFile(join(out, 'build.json'), 'utf8')) as BuildRecord;
    expect(record.guest).toMatchObject({ type: 'pvh', cmdline: 'root=/dev/xvda ro console=hvc0 selinux=0', network: { mode: 'static', address: '172.16.31.4', prefix: 16, gateway: '172.16.0.1' } });
    expect(record.guest.pvh).toEqual({ pvh: true, evidence: expect.stringMatching(new RegExp(`/config-${record.kernel!.release.replace(/\./g, '\\.')}: CONFIG_XEN_PVH=y$`)) });
    const cfg = await readFile(join(out, 'xen', 'test1', 'busybox.cfg'), 'utf8');
    expect(cfg).toMatch(/^type = "pvh"$/m);
    expect(cfg).toMatch(/^cmdline = "root=\/dev\/xvda ro console=hvc0 selinux=0"$/m);
  }, 900_000);

  it("domu verify proves it on Debian's real Xen from this cold cache: xl create of its own config, modules, network, disk, a live migration", async () => {
    const before = await identities(out);
    const { r, s } = await domuJson(['verify', '--json', '--config', config, '--cache-dir', cache, '--out', out, ...XEN_TEST_TIMEOUT]);
    expect(r.exitCode, `${r.stderr}\n${r.stdout}`).toBe(0);
    // Cold: Xen's packages fetched and the dom0 ramdisk made for this cache.
    expect((stage(s, 'xen').outputs as { dom0Initramfs: { hit: boolean } }).dom0Initramfs.hit).toBe(false);
    const checks = (['guest', 'checks', 'move', 'disk'] as const).flatMap((n) => (stage(s, n).outputs as { checks: { name: string; ok: boolean; detail: string }[] }).checks);
    expect(checks.filter((c) => !c.ok)).toEqual([]);
    const detail = (name: string) => checks.find((c) => c.name === name)?.detail;
    expect(detail('xl create')).toBe('/scsistore/xen/test1/busybox.cfg accepted');
    expect(detail('modules loaded')).toMatch(/xen_netfront loaded/);
    expect(detail('root file system')).toMatch(/^\/dev\/xvda ext4 /);
    expect(detail('address')).toMatch(/172\.16\.31\.4\/16/);
    expect(detail('live migration')).toMatch(/Migration successful/);
    const uuid = /holds (\S+) \(synced\)/.exec(detail('file written')!)![1]!;
    expect(detail('file after the move')).toBe(`/domu-verify.txt: ${uuid}`);
    expect(detail('file on the guest disk')).toMatch(new RegExp(`the image holds /domu-verify\\.txt = ${uuid}$`));
    expect(await identities(out)).toEqual(before);
  }, 900_000);

  it('two releases of the build are byte-identical', async () => {
    const release = (dist: string) => domuJson(['release', '--json', '--config', config, '--cache-dir', cache, '--out', out, '--dist', dist]);
    const a = await release(join(dir, 'dist-a'));
    const b = await release(join(dir, 'dist-b'));
    expect(a.r.exitCode, a.r.stderr).toBe(0);
    expect(b.r.exitCode, b.r.stderr).toBe(0);
    const [nameA] = await readdir(join(dir, 'dist-a'));
    const [nameB] = await readdir(join(dir, 'dist-b'));
    expect(nameA).toBe(nameB);
    expect(nameA).toMatch(/^busybox-1\.35\.0-[0-9a-f]{12}$/);
    const files = (await readdir(join(dir, 'dist-a', nameA!))).sort();
    expect(files).toEqual((await readdir(join(dir, 'dist-b', nameB!))).sort());
    expect(files).toEqual(expect.arrayContaining(['SHA256SUMS', 'manifest.json', 'busybox.img.zst', 'configs.tar.gz']));
    for (const f of files) {
      const x = await readFile(join(dir, 'dist-a', nameA!, f));
      const y = await readFile(join(dir, 'dist-b', nameB!, f));
      expect(x.equals(y), f).toBe(true);
    }
  }, 300_000);

  it('a second build is fully cached and leaves the image untouched', async () => {
    const before = await stat(join(out, 'busybox.img'));
    const { r, s } = await build();
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.upToDate).toBe(true);
    const after = await stat(join(out, 'busybox.img'));
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
  }, 300_000);
});
