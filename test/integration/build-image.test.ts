// `domu build` to an image, for real: busybox 1.35.0 compiled once per test run (a private cache
// seeded from the shared one), then the rootfs and image stages through the CLI, checked with
// debugfs, e2fsck and losetup.
import { randomBytes } from 'node:crypto';
import { cp, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { listImage, type ImageEntry } from '../../src/fs/e2fs.js';
import { memoryLogger } from '../../src/core/log.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';
import { RAMDISK_MODULES } from '../../src/pipeline/tasks/kernel.js';
import { getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { seedCache } from '../helpers/static-busybox.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';
import { domu, domuJson, stage, startDomu } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';

const env = { log: memoryLogger(), signal: new AbortController().signal };
const isRoot = process.getuid?.() === 0;
let dir: string;
let cache: string;
let tarball: string;
let plain: string;
let kernel: KernelPackage;
/** The guest kernel from the shared test cache (explicit paths: no second download here). */
let kernelYaml: string;

beforeAll(async () => {
  tarball = await getBusyboxTarball();
  kernel = await getKernelPackage();
  kernelYaml = `kernel:\n  image: ${kernel.image}\n`;
  dir = await tempDir('domu-build-image-');
  cache = join(dir, 'cache');
  // busybox compiled once per test run (compile-real tests the cold compile), copied in.
  await seedCache(cache);
  plain = join(dir, 'guest.yaml');
  await writeFile(plain, `busybox:\n  version: 1.35.0\n${kernelYaml}`);
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const build = (out: string, extra: string[] = [], config = plain) =>
  domuJson(['build', '--json', '--config', config, '--cache-dir', cache, '--source', tarball, '--jobs', '2', '--out', out, ...extra]);

const byPath = (entries: ImageEntry[]) => new Map(entries.map((e) => [e.path, e]));
const TYPE = 0o170000;

describe('the default guest image', () => {
  let first: Awaited<ReturnType<typeof build>>;
  let image: string;

  it('builds a sparse 1 GiB ext4 image with the designed layout, all root:root', async () => {
    first = await build(join(dir, 'out1'));
    expect(first.r.exitCode, first.r.stderr).toBe(0);
    // The seeded cache is the one a CLI build of these inputs would have made: no make here.
    expect(stage(first.s, 'compile').cacheHit).toBe(true);
    // The only warning: the default store.disk file with the lab's two hosts (corruption risk).
    expect((first.s.warnings ?? []).map((w) => w.message)).toEqual([expect.stringMatching(/^store\.disk: file with 2 hosts: .* Use store\.disk: lun$/)]);
    image = join(dir, 'out1', 'busybox.img');
    const img = stage(first.s, 'image').outputs;
    expect(img).toMatchObject({ path: image, apparentBytes: 1 << 30, populate: 'rootless', reproducible: true });
    const st = await stat(image);
    expect(st.size).toBe(1 << 30);
    expect(st.blocks * 512).toBeLessThanOrEqual(40 * 1048576);
    expect(img.allocatedBytes).toBe(st.blocks * 512);

    await execa('e2fsck', ['-fn', image]); // throws on anything but clean
    const entries = byPath(await listImage(env, image));
    const top = [...entries.keys()].filter((p) => /^\/[^/]+$/.test(p)).sort();
    expect(top).toEqual(['/bin', '/boot', '/dev', '/etc', '/lib', '/lost+found', '/media', '/misc', '/mnt', '/opt', '/proc', '/root', '/sbin', '/sys', '/tmp', '/usr']);
    expect(entries.has('/linuxrc')).toBe(false);
    expect(entries.get('/lib/modules')?.mode).toBe(0o040755);
    expect(entries.get('/tmp')?.mode).toBe(0o041777);
    expect(entries.get('/bin/busybox')!.mode & 0o7777 & 0o111).toBe(0o111);
    expect(entries.get('/bin/busybox')!.mode & TYPE).toBe(0o100000);
    expect(entries.get('/bin/sh')!.mode & TYPE).toBe(0o120000);
    expect(entries.get('/etc/rc.d/rcS')!.mode & 0o111).toBe(0o111);
    for (const [path, e] of entries) {
      expect([e.uid, e.gid], path).toEqual([0, 0]);
    }
    const dev = (p: string) => entries.get(p)!;
    expect(dev('/dev/console').mode).toBe(0o020600);
    expect(dev('/dev/xvda').mode).toBe(0o060660);
    const stat1 = (await execa('debugfs', ['-R', 'stat /dev/xvda1', image])).stdout;
    expect(stat1).toMatch(/Type: block/);
    expect(stat1).toMatch(/Device major\/minor number: 202:0?1 \(hex ca:0?1\)/);
    const hostname = (await execa('debugfs', ['-R', 'cat /etc/hostname', image])).stdout.trim();
    expect(hostname).toBe('busybox');
    // The guest's network as data for rcS, and the scripts init and udhcpc run.
    const netconf = (await execa('debugfs', ['-R', 'cat /etc/network.conf', image])).stdout;
    expect(netconf.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(['mode=static', 'address=172.16.31.4/16', 'gateway=172.16.0.1']);
    for (const script of ['/etc/rc.d/hvc0-shell', '/usr/share/udhcpc/default.script']) expect(entries.get(script)!.mode & 0o777, script).toBe(0o755);

    // The modules: xen-netfront in the release tree and flat (the reference lab's insmod line),
    // modules.dep, and /etc/modules with the load order.
    const rel = `/lib/modules/${kernel.release}`;
    const shipped = await stat(join(kernel.modules, 'kernel/drivers/net/xen-netfront.ko'));
    expect(entries.get(`${rel}/kernel/drivers/net/xen-netfront.ko`)?.size).toBe(shipped.size);
    expect(entries.get('/lib/modules/xen-netfront.ko')?.size).toBe(shipped.size);
    const cat = async (p: string) => (await execa('debugfs', ['-R', `cat ${p}`, image])).stdout;
    expect(await cat(`${rel}/modules.dep`)).toBe('kernel/drivers/net/xen-netfront.ko:');
    expect((await cat('/etc/modules')).split('\n').filter((l) => l && !l.startsWith('#'))).toEqual(['xen_netfront']);
    expect(stage(first.s, 'modules').outputs).toMatchObject({ release: kernel.release, loadOrder: ['xen_netfront'] });

    // The kernel and the generated ramdisk beside the image.
    expect(first.s.boot).toEqual({ kernel: join(dir, 'out1', 'boot', `vmlinuz-${kernel.release}`), ramdisk: join(dir, 'out1', 'boot', `initrd-${kernel.release}-busybox.gz`) });
    expect((await stat(first.s.boot!.kernel)).size).toBe((await stat(kernel.image)).size);
    const initramfs = stage(first.s, 'initramfs').outputs as { modules: string[]; sha256: string };
    // What this kernel's kmod loads for the same requests (modprobe --show-depends on a depmod of a
    // hard-linked copy of its modules, no host configuration): ext4's dependencies and the
    // providers of its softdep (crypto-crc32c: crc32c_generic, …) among them.
    const kmodRoot = join(dir, 'kmod');
    await mkdir(join(kmodRoot, 'lib', 'modules'), { recursive: true });
    await mkdir(join(dir, 'modprobe.d'), { recursive: true });
    await execa('cp', ['-al', kernel.modules, join(kmodRoot, 'lib', 'modules')]);
    await execa('depmod', ['-b', kmodRoot, kernel.release]);
    const kmodLoads = async (names: string[]) =>
      (await execa('modprobe', ['-C', join(dir, 'modprobe.d'), '--show-depends', '-d', kmodRoot, '-S', kernel.release, '-a', ...names])).stdout
        .split('\n')
        .filter((l) => l.startsWith('insmod '))
        .map((l) => basename(l.split(/\s+/)[1]!).replace(/\.ko(\.\w+)?$/, '').replace(/-/g, '_'));
    const ext4 = await kmodLoads(['ext4']);
    expect(ext4).toEqual(expect.arrayContaining(['jbd2', 'ext4']));
    expect(initramfs.modules).toEqual(expect.arrayContaining(['xen_blkfront', 'ext4', 'virtio_blk', 'virtio_pci', ...ext4]));
    expect(new Set(initramfs.modules)).toEqual(new Set(await kmodLoads(RAMDISK_MODULES)));
    expect((await readdir(join(dir, 'out1'))).sort()).toEqual(['boot', 'build.json', 'busybox.img', 'hosts', 'storage', 'xen']);
  }, 300_000);

  it('a second build of the same inputs is byte-identical (rootless)', async () => {
    const again = await build(join(dir, 'out2'));
    expect(again.r.exitCode, again.r.stderr).toBe(0);
    expect(stage(again.s, 'compile').cacheHit).toBe(true);
    expect(stage(again.s, 'image').outputs.sha256).toBe(stage(first.s, 'image').outputs.sha256);
    expect(stage(again.s, 'initramfs').outputs.sha256).toBe(stage(first.s, 'initramfs').outputs.sha256);
  }, 120_000);

  it('a rebuild with nothing changed is up to date: every stage cached, the image not rewritten', async () => {
    const out = join(dir, 'out1');
    const before = await stat(join(out, 'busybox.img'));
    const boot = await stat(join(out, 'boot', `initrd-${kernel.release}-busybox.gz`));
    const record = await readFile(join(out, 'build.json'), 'utf8');
    const again = await build(out);
    expect(again.r.exitCode, again.r.stderr).toBe(0);
    expect(again.s.upToDate).toBe(true);
    for (const n of ['source', 'extract', 'kconfig', 'compile', 'rootfs', 'initramfs', 'image', 'record']) expect(stage(again.s, n).cacheHit, n).toBe(true);
    const after = await stat(join(out, 'busybox.img'));
    expect([after.ino, after.mtimeMs]).toEqual([before.ino, before.mtimeMs]);
    const bootAfter = await stat(join(out, 'boot', `initrd-${kernel.release}-busybox.gz`));
    expect([bootAfter.ino, bootAfter.mtimeMs]).toEqual([boot.ino, boot.mtimeMs]);
    expect(await readFile(join(out, 'build.json'), 'utf8')).toBe(record);
    // The plain summary says so in words and lists every artifact with sizes and sha256.
    const text = await domu(['build', '--config', plain, '--cache-dir', cache, '--source', tarball, '--jobs', '2', '--out', out]);
    expect(text.stdout).toContain('up to date: every stage hit the cache; nothing in the output was rewritten');
    expect(text.stdout).toMatch(new RegExp(`${out}/busybox\\.img  1024\\.0 MiB apparent, \\d+\\.\\d MiB allocated  sha256 [0-9a-f]{64}`));
    // Touching the image by hand makes the next build rebuild it.
    await writeFile(join(out, 'busybox.img'), 'replaced by hand');
    const rebuilt = await build(out);
    expect(stage(rebuilt.s, 'image').cacheHit).toBe(false);
    expect((await stat(join(out, 'busybox.img'))).size).toBe(1 << 30);
  }, 180_000);

  it('a skel-only change rebuilds only rootfs and image; a hosts-only change only the configs', async () => {
    const lab = join(dir, 'lab-change');
    await cp(join(PROJECT_ROOT, 'rootfs-skel'), join(lab, 'rootfs-skel'), { recursive: true });
    await cp(join(PROJECT_ROOT, 'rootfs-devices.txt'), join(lab, 'rootfs-devices.txt'));
    const config = join(lab, 'guest.yaml');
    const yaml = (hosts: string) => `busybox:\n  version: 1.35.0\nimage:\n  skel: rootfs-skel\n${kernelYaml}${hosts}`;
    await writeFile(config, yaml(''));
    const out = join(dir, 'out-change');
    const run = () => domuJson(['build', '--json', '--config', config, '--cache-dir', cache, '--source', tarball, '--jobs', '2', '--out', out]);
    expect((await run()).r.exitCode).toBe(0);
    const rebuilt = (s: Awaited<ReturnType<typeof run>>['s']) => s.stages.filter((x) => !x.cacheHit).map((x) => x.name);

    await writeFile(join(lab, 'rootfs-skel', 'etc', 'motd'), 'welcome\n');
    const skel = await run();
    expect(skel.r.exitCode, skel.r.stderr).toBe(0);
    // kernel, modules and xen configs always run (cheap: memo, cached index, unchanged files are not rewritten).
    expect(rebuilt(skel.s)).toEqual(['kernel', 'modules', 'rootfs', 'image', 'xen configs', 'record']);
    expect(skel.s.configs!.written).toBe(0);

    await writeFile(config, yaml('hosts:\n  - { name: test1, address: 172.16.31.1, bridge: xenbr0 }\n  - { name: test3, address: 172.16.31.3, bridge: xenbr0 }\n'));
    const hosts = await run();
    expect(hosts.r.exitCode, hosts.r.stderr).toBe(0);
    expect(rebuilt(hosts.s)).toEqual(['kernel', 'modules', 'xen configs', 'record']);
    expect(hosts.s.configs!.written).toBeGreaterThan(0);
    expect(hosts.s.configs!.removed).toContain('xen/test2/busybox.cfg');
  }, 300_000);

  it('--publish copies image, boot files and configs into the store; a changed image keeps the old one as .prev', async () => {
    const store = join(dir, 'store');
    await mkdir(store, { recursive: true });
    const pub = (out: string, extra: string[] = []) => build(out, ['--publish', '--store', store, '--allow-unmounted', ...extra]);
    const a = await pub(join(dir, 'out-pub'));
    expect(a.r.exitCode, a.r.stderr).toBe(0);
    expect(a.s.stages.map((x) => x.name)).toEqual(['store', 'source', 'extract', 'kconfig', 'compile', 'kernel', 'modules', 'rootfs', 'initramfs', 'image', 'xen configs', 'record', 'publish']);
    const published = await readFile(join(store, 'busybox.img'));
    expect(published.equals(await readFile(join(dir, 'out-pub', 'busybox.img')))).toBe(true);
    expect((await stat(join(store, 'busybox.img'))).blocks * 512).toBeLessThanOrEqual(40 * 1048576); // still sparse
    expect(existsSync(join(store, 'boot', `vmlinuz-${kernel.release}`))).toBe(true);
    expect(existsSync(join(store, 'boot', `initrd-${kernel.release}-busybox.gz`))).toBe(true);
    expect(await readFile(join(store, 'xen/test1/busybox.cfg'), 'utf8')).toContain(`kernel = "/scsistore/boot/vmlinuz-${kernel.release}"`);

    // Another hostname changes the image: the published one is kept as .prev, whole.
    const b = await pub(join(dir, 'out-pub2'), ['--set', 'guest.name=busybox2']);
    expect(b.r.exitCode, b.r.stderr).toBe(0);
    expect(b.s.published!.previousImage).toBeDefined();
    expect((await readFile(join(store, 'busybox.img.prev'))).equals(published)).toBe(true);
    expect((await readFile(join(store, 'busybox.img'))).equals(await readFile(join(dir, 'out-pub2', 'busybox.img')))).toBe(true);
  }, 300_000);

  it.skipIf(!isRoot)('loop-mount population holds the same files, modes and link targets (needs root)', async () => {
    const m = await build(join(dir, 'out-mount'), ['--populate', 'mount']);
    expect(m.r.exitCode, m.r.stderr).toBe(0);
    expect(stage(m.s, 'image').outputs).toMatchObject({ populate: 'mount', reproducible: false });
    const mountImage = join(dir, 'out-mount', 'busybox.img');
    await execa('e2fsck', ['-fn', mountImage]);
    const a = byPath(await listImage(env, image));
    const b = byPath(await listImage(env, mountImage));
    const shape = (m: Map<string, ImageEntry>) =>
      [...m.values()].filter((e) => e.path !== '/lost+found').map((e) => [e.path, e.mode, e.uid, e.gid, (e.mode & TYPE) === 0o040000 ? 0 : e.size]).sort();
    expect(shape(b)).toEqual(shape(a));
    for (const link of ['/bin/sh', '/sbin/init', '/usr/bin/env']) {
      const target = async (img: string) => (await execa('debugfs', ['-R', `stat ${link}`, img])).stdout.match(/Fast link dest: "([^"]*)"/)?.[1];
      expect(await target(mountImage), link).toBe(await target(image));
    }
  }, 300_000);
});

describe('interrupted while populating', () => {
  it.skipIf(!isRoot)('SIGTERM leaves no mount, no loop device, no new file, and the previous image intact; the next run succeeds', async () => {
    // A skel with a large file makes population take long enough to be interrupted.
    const lab = join(dir, 'lab');
    await cp(join(PROJECT_ROOT, 'rootfs-skel'), join(lab, 'rootfs-skel'), { recursive: true });
    await cp(join(PROJECT_ROOT, 'rootfs-devices.txt'), join(lab, 'rootfs-devices.txt'));
    await mkdir(join(lab, 'rootfs-skel', 'opt'), { recursive: true });
    const big = join(lab, 'rootfs-skel', 'opt', 'payload.bin');
    for (let i = 0; i < 12; i++) await writeFile(big, randomBytes(16 << 20), { flag: i ? 'a' : 'w' });
    const guest = join(lab, 'guest.yaml');
    await writeFile(guest, `busybox:\n  version: 1.35.0\nimage:\n  skel: rootfs-skel\n  populate: mount\n${kernelYaml}`);
    const out = join(dir, 'out-term');
    await mkdir(out, { recursive: true });
    const previous = join(out, 'busybox.img');
    await writeFile(previous, 'the image published before');

    const child = startDomu(['build', '--config', guest, '--cache-dir', cache, '--source', tarball, '--jobs', '2', '--out', out]);
    let sent = false;
    child.stdout?.on('data', (chunk: Buffer) => {
      if (!sent && /populating .* \(mount\)/.test(chunk.toString())) {
        sent = true;
        child.kill('SIGTERM');
      }
    });
    const r = await child;
    expect(sent, String(r.stdout)).toBe(true);
    expect(r.exitCode, String(r.stderr)).toBe(143);
    expect(String(r.stderr)).toMatch(/interrupted by SIGTERM/);
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    expect(mounts).not.toMatch(/domu-mnt|\.tmp-busybox\.img/);
    const loops = (await execa('losetup', ['-a'])).stdout;
    expect(loops).not.toContain(out);
    expect(await readdir(out)).toEqual(['busybox.img']);
    expect(await readFile(previous, 'utf8')).toBe('the image published before');

    const next = await domuJson(['build', '--json', '--config', guest, '--cache-dir', cache, '--source', tarball, '--jobs', '2', '--out', out]);
    expect(next.r.exitCode, next.r.stderr).toBe(0);
    expect((await stat(previous)).size).toBe(1 << 30);
    expect(existsSync(join(out, 'busybox.img'))).toBe(true);
  }, 300_000);
});
