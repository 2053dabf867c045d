// The nested Xen host for real: Debian's Xen packages and kernel fetched into the shared test
// cache, the dom0 ramdisk built twice (the second a cache hit with the same bytes, within 1 s),
// Xen booted under QEMU TCG with a scratch ext4 store disk, dom0's ready marker awaited, and then
// on dom0's console: `xl info` (the package's Xen, HAP), the store mounted with its marker file,
// the bridge with its address, a guest console line streamed as `G| `, domu-guest-send's refusal of
// an unknown domain, `xl dmesg`. No QEMU is left after it.
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { run, which } from '../../src/core/exec.js';
import { sha256File } from '../../src/core/hash.js';
import { buildDom0Initramfs } from '../../src/xen/dom0-initramfs.js';
import { hypervisorFromXlInfo, liveMigrationProblem } from '../../src/xen/hypervisor.js';
import { XenHost, type XenHostParts } from '../../src/xen/nested-xen.js';
import { fetchXenPackages } from '../../src/xen/xen-packages.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { makeTestContext, type TestContext } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { qemusFor } from '../helpers/qemu-processes.js';

const missing = (await which('qemu-system-x86_64')) ? undefined : 'qemu-system-x86_64 not found on PATH (apt-get install qemu-system-x86; scripts/setup.sh does it)';
if (missing) console.warn(`xen-dom0-real: SKIPPING: ${missing}`);

let ctx: TestContext;
let parts: XenHostParts;


describe.skipIf(missing)('nested Xen host (real packages, QEMU TCG)', () => {
  beforeAll(async () => {
    ctx = await makeTestContext({ cacheDir: TEST_CACHE_DIR });
    ctx.workDir = join(ctx.root, 'work');
  }, 60_000);
  afterAll(async () => {
    await ctx?.cleanup.runAll();
    if (ctx) expect(await qemusFor(ctx.root), 'no QEMU process left behind').toEqual([]);
    await ctx?.dispose();
  });

  it('fetches the packages and builds the dom0 ramdisk, the second time from the cache with the same bytes', async () => {
    const xen = await fetchXenPackages(ctx);
    expect(xen.package).toBe(`xen-hypervisor-${xen.majorMinor}-amd64`);
    expect(xen.version.startsWith(`${xen.majorMinor}.`)).toBe(true);
    const names = xen.debs.map((d) => d.package);
    for (const p of [`xen-utils-${xen.majorMinor}`, 'xen-utils-common', 'xenstore-utils', 'busybox-static', 'bash', 'libc6', 'libgcc-s1']) expect(names).toContain(p);
    expect((await readFile(xen.hypervisor)).subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    const kernel = await getKernelPackage();

    const first = await buildDom0Initramfs(ctx, xen, kernel);
    const firstSha = await sha256File(first.path);
    const t = performance.now();
    const second = await buildDom0Initramfs(ctx, xen, kernel);
    const warmS = (performance.now() - t) / 1000;
    expect(second.hit).toBe(true);
    expect(second.key).toBe(first.key);
    expect(await sha256File(second.path)).toBe(firstSha);
    expect(warmS, 'a warm hit takes at most 1 s').toBeLessThanOrEqual(1);
    for (const m of ['xen_evtchn', 'xen_gntdev', 'xen_gntalloc', 'xen_privcmd', 'xenfs', 'xen_blkback', 'xen_netback', 'loop', 'bridge', 'stp', 'llc', 'virtio_blk', 'virtio_pci', 'ext4', 'jbd2']) expect(second.modules).toContain(m);
    for (const l of ['libxenlight.so.4.17'.replace('4.17', xen.majorMinor), 'libc.so.6', 'libgcc_s.so.1', 'libtinfo.so.6']) expect(second.libraries).toContain(l);
    ctx.log.info(`dom0 ramdisk: ${second.size} bytes gzip, ${second.uncompressedSize} unpacked, warm hit ${warmS.toFixed(2)} s`);
    parts = { xen, kernel, initramfs: second };
  }, 900_000);

  it('boots Xen with dom0, which answers xl info, mounts the store, has the bridge and streams guest lines', async () => {
    expect(parts, 'the packages and ramdisk of the first test').toBeDefined();
    const tree = join(ctx.root, 'store-tree');
    await mkdir(tree);
    const marker = `domu-store-${randomBytes(6).toString('hex')}`;
    await writeFile(join(tree, 'marker'), `${marker}\n`);
    const image = join(ctx.root, 'store.img');
    await run(ctx, 'truncate', ['-s', '64M', image]);
    await run(ctx, 'mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, image]);

    const host = await XenHost.start(ctx, {
      ...parts,
      params: { hostname: 'xenhost1', bridge: { name: 'xenbr0', address: '172.16.31.1', prefix: 16 }, store: { device: '/dev/vda', path: '/scsistore' }, guestName: 'probe' },
      storeImage: image,
      readyTimeoutS: 120,
    });
    try {
      expect(await qemusFor(ctx.root)).toHaveLength(1);
      const info = await host.run('xl info', 60);
      expect(info.status).toBe(0);
      const field = (k: string) => info.lines.find((l) => l.startsWith(`${k} `))?.split(':').slice(1).join(':').trim();
      expect(field('xen_version')?.startsWith(`${parts.xen.majorMinor}.`), info.lines.join('\n')).toBe(true);
      expect(field('virt_caps')?.split(/\s+/)).toContain('hap');
      expect(field('host')).toBe('xenhost1');
      // What `domu doctor` says on a Dom0 of this hypervisor (Debian's Xen: HAP, no shadow paging).
      const hv = hypervisorFromXlInfo(info.lines.join('\n'));
      expect(hv?.version).toBe(field('xen_version'));
      expect(hv?.virtCaps).toEqual(field('virt_caps')!.split(/\s+/));
      if (hv!.virtCaps.includes('shadow')) expect(liveMigrationProblem('pv', hv!.virtCaps)).toBeUndefined();
      else expect(liveMigrationProblem('pv', hv!.virtCaps)).toMatch(/^a PV guest cannot live-migrate on this hypervisor: it has no shadow paging/);
      expect(liveMigrationProblem('pvh', hv!.virtCaps)).toBeUndefined();

      const store = await host.run(['grep " /scsistore " /proc/mounts | cut -d" " -f1,3', 'cat /scsistore/marker'], 30);
      expect(store.lines).toEqual(['/dev/vda ext4', marker]);
      const br = await host.run('ip -4 -o addr show dev xenbr0', 30);
      expect(br.lines.join('\n')).toMatch(/inet 172\.16\.31\.1\/16 /);

      // guest_name=probe: /init already streams that domain's console log; a line appended to it
      // (as xenconsoled would) comes back as a guest line, not a dom0 line.
      const from = host.console.length;
      const failed = await host.run(['echo "hello from $((6*7))" >> /var/log/xen/console/guest-probe.log', 'false'], 30);
      expect(failed.status).toBe(1);
      const g = await host.waitForGuest(/hello from 42$/, 'the streamed guest line', 30, from);
      expect(g.line).toBe('hello from 42');
      expect(host.tail('guest', 5)).toContain('hello from 42');
      expect(host.lines().dom0.some((l) => l.includes('hello from 42'))).toBe(false);
      const send = await host.run('domu-guest-send nosuch </dev/null', 30);
      expect(send.status).toBe(1);
      expect(send.lines.join('\n')).toMatch(/domu-guest-send: no domain nosuch/);
      const dmesg = await host.run('xl dmesg | grep -c "Xen version"', 30);
      expect(Number(dmesg.lines.at(-1))).toBeGreaterThan(0);
      ctx.log.info(`xen: dom0 ready in ${host.secondsToReady.toFixed(1)} s`);
    } finally {
      await host.stop();
    }
    expect(await qemusFor(ctx.root), 'no QEMU process left after stop()').toEqual([]);
  }, 600_000);
});
