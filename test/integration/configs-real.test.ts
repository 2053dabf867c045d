// The generated configs against the real tools: every xl domain config is parsed by Debian's
// `xl -N create` (offline harness, test/helpers/xl.ts) and the JSON it prints is checked field
// by field; the generated targets.conf is loaded into a real tgtd on 127.0.0.1 and `iscsi-ls`
// sees the target and its LUN; `domu configs` through the CLI regenerates without touching the
// image, removes files of hosts that left, and fails bad inventories with exit 2.
import { mkdir, readFile, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { loadDescription } from '../../src/model/description.js';
import { bootNames } from '../../src/pipeline/plan.js';
import type { Description } from '../../src/model/schema.js';
import { renderConfigs } from '../../src/stages/xenconfigs.js';
import { domu, domuJson } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { iscsiCapacity, iscsiLs, startTgtd, stopAllTgtd } from '../helpers/tgt.js';
import { getXl, type XlOffline } from '../helpers/xl.js';
import type { KernelPackage } from '../../src/kernel/kernel.js';

const RELEASE = '6.1.0-56-amd64';
let dir: string;
let xl: XlOffline;
let kernel: KernelPackage;

beforeAll(async () => {
  dir = await tempDir('domu-configs-real-');
  [xl, kernel] = await Promise.all([getXl(), getKernelPackage()]);
}, 300_000);
afterAll(async () => {
  await stopAllTgtd();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Render `desc` into `dir/<name>/` and return the domain config paths by host. */
async function renderTo(name: string, desc: Description): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const f of renderConfigs(desc, bootNames(desc, RELEASE)).files) {
    const p = join(dir, name, f.path);
    await mkdir(join(p, '..'), { recursive: true });
    await writeFile(p, f.content);
    const m = /^xen\/([^/]+)\/[^/]+\.cfg$/.exec(f.path);
    if (m) out.set(m[1]!, p);
  }
  return out;
}

describe('xl parses every generated domain config', () => {
  it('the reference inventory (xl dialect, PVH): name, type, memory, vcpus, kernel, ramdisk, cmdline, disk, vif as rendered', async () => {
    const desc = loadDescription({});
    const configs = await renderTo('ref-xl', desc);
    expect([...configs.keys()]).toEqual(['test1', 'test2']);
    const mac = renderConfigs(desc, bootNames(desc, RELEASE)).domain.mac;
    for (const [host, cfg] of configs) {
      const r = await xl.parse(cfg);
      expect(r.ok, `${host}: ${r.stderr}`).toBe(true);
      expect(r.stderr, host).not.toMatch(/warning/i);
      const j = r.json;
      expect(j.c_info.name).toBe('busybox');
      expect(j.c_info.type).toBe('pvh');
      expect(j.b_info.target_memkb).toBe(512 * 1024);
      expect(j.b_info.max_memkb).toBe(512 * 1024);
      expect(j.b_info.max_vcpus).toBe(1);
      expect(j.b_info.kernel).toBe(`/scsistore/boot/vmlinuz-${RELEASE}`);
      expect(j.b_info.ramdisk).toBe(`/scsistore/boot/initrd-${RELEASE}-busybox.gz`);
      expect(j.b_info.cmdline).toBe('root=/dev/xvda ro console=hvc0 selinux=0');
      expect(j.disks).toHaveLength(1);
      expect(j.disks[0]).toMatchObject({ vdev: 'xvda', pdev_path: '/scsistore/busybox.img', format: 'raw', readwrite: 1 });
      expect(j.nics).toHaveLength(1);
      expect(j.nics[0]).toMatchObject({ mac, bridge: 'xenbr0' });
    }
  });

  it('store.disk lun: the disk is the guest LUN by its by-path name, the same on every host, and xl takes it as a raw rw disk', async () => {
    const desc = loadDescription({ text: 'store:\n  disk: lun\n' });
    const configs = await renderTo('ref-xl-lun', desc);
    expect([...configs.keys()]).toEqual(['test1', 'test2']);
    for (const [host, cfg] of configs) {
      const r = await xl.parse(cfg);
      expect(r.ok, `${host}: ${r.stderr}`).toBe(true);
      expect(r.stderr, host).not.toMatch(/warning/i);
      expect(r.json.disks).toHaveLength(1);
      expect(r.json.disks[0], host).toMatchObject({ vdev: 'xvda', pdev_path: '/dev/disk/by-path/ip-172.16.31.3:3260-iscsi-iqn.2015-02.com.stu31:t1-lun-2', format: 'raw', readwrite: 1 });
    }
  });

  it('xen.type pv: the same domain as PV', async () => {
    const desc = loadDescription({ text: 'xen:\n  type: pv\n' });
    for (const [host, cfg] of await renderTo('ref-xl-pv', desc)) {
      const r = await xl.parse(cfg);
      expect(r.ok, `${host}: ${r.stderr}`).toBe(true);
      expect(r.stderr, host).not.toMatch(/warning/i);
      expect(r.json.c_info.type).toBe('pv');
      expect(r.json.b_info.cmdline).toBe('root=/dev/xvda ro console=hvc0 selinux=0');
      expect(r.json.b_info.kernel).toBe(`/scsistore/boot/vmlinuz-${RELEASE}`);
    }
  });

  it('the xm dialect (reference lab form) parses to the same domain, as PV', async () => {
    const desc = loadDescription({ text: 'xen:\n  toolstack: xm\n' });
    for (const [host, cfg] of await renderTo('ref-xm', desc)) {
      const r = await xl.parse(cfg);
      expect(r.ok, `${host}: ${r.stderr}`).toBe(true);
      expect(r.json.c_info.type).toBe('pv');
      expect(r.json.b_info.cmdline).toBe('root=/dev/xvda ro console=hvc0 selinux=0');
      expect(r.json.disks[0]).toMatchObject({ vdev: 'xvda', pdev_path: '/scsistore/busybox.img', readwrite: 1 });
      expect(r.json.b_info.target_memkb).toBe(512 * 1024);
      expect(r.json.nics[0].bridge).toBe('xenbr0');
    }
  });

  it('a custom inventory: three hosts, maxmem, vcpus, a given MAC, another store path and no ramdisk', async () => {
    const desc = loadDescription({
      text: [
        'guest: { name: web-1, memory: 256, maxmem: 1024, vcpus: 4, mac: "00:16:3e:0a:0b:0c", extra: "console=hvc0 quiet", on_crash: preserve }',
        'kernel: { ramdisk: none }',
        'store: { path: /srv/xenstore }',
        'hosts:',
        '  - { name: a, address: 10.1.0.1, bridge: br-guests }',
        '  - { name: b, address: 10.1.0.2, bridge: br-guests }',
        '  - { name: c, address: 10.1.0.3, bridge: br-guests }',
        '',
      ].join('\n'),
    });
    const configs = await renderTo('custom', desc);
    expect(configs.size).toBe(3);
    for (const [host, cfg] of configs) {
      const r = await xl.parse(cfg);
      expect(r.ok, `${host}: ${r.stderr}`).toBe(true);
      expect(r.json.c_info.name).toBe('web-1');
      expect(r.json.b_info.target_memkb).toBe(256 * 1024);
      expect(r.json.b_info.max_memkb).toBe(1024 * 1024);
      expect(r.json.b_info.max_vcpus).toBe(4);
      expect(r.json.b_info.ramdisk).toBeUndefined();
      expect(r.json.b_info.cmdline).toBe('root=/dev/xvda ro console=hvc0 quiet');
      expect(r.json.disks[0].pdev_path).toBe('/srv/xenstore/busybox.img');
      expect(r.json.nics[0]).toMatchObject({ mac: '00:16:3e:0a:0b:0c', bridge: 'br-guests' });
      expect(r.json.on_crash).toBe('preserve');
    }
  });
});

describe('the generated targets.conf on a real tgtd', () => {
  it('iscsi-ls sees the target and its LUN; an initiator subnet without us hides it', async () => {
    const lun = join(dir, 'lun.img');
    await writeFile(lun, '');
    await truncate(lun, 64 * 1048576); // a sparse file stands in for the lab's /dev/sda3
    const tgtd = await startTgtd();
    const render = async (initiators: string) => {
      const desc = loadDescription({ text: `store: { iqn: "iqn.2015-02.com.stu31:t1", backing_store: ${lun}, initiators: ${initiators} }\n` });
      const file = renderConfigs(desc, bootNames(desc, RELEASE)).files.find((f) => f.path === 'storage/targets.conf')!;
      const p = join(dir, `targets-${initiators.replace(/\W/g, '_')}.conf`);
      await writeFile(p, file.content);
      return p;
    };
    await tgtd.loadConfig(await render('127.0.0.0/8'));
    const seen = await iscsiLs(tgtd.portal);
    expect(seen.targets.map((t) => t.iqn)).toEqual(['iqn.2015-02.com.stu31:t1']);
    // LUN 0 is tgt's controller; LUN 1 is the disk backed by our file, with its capacity.
    const disk = seen.targets[0]!.luns.filter((l) => l.type === 'DIRECT_ACCESS');
    expect(disk.map((l) => l.lun)).toEqual([1]);
    expect(await iscsiCapacity(tgtd.portal, 'iqn.2015-02.com.stu31:t1', 1)).toMatchObject({ bytes: 64 * 1048576 });
    expect(await tgtd.show()).toContain(`Backing store path: ${lun}`);

    // The reference subnet: our 127.0.0.1 is not an allowed initiator, so the target is hidden.
    await tgtd.loadConfig(await render('172.16.31.0/24'));
    expect((await iscsiLs(tgtd.portal)).targets).toEqual([]);
    await tgtd.stop();
  });
});

describe('domu configs (CLI)', () => {
  it('writes every host file, leaves the image alone, is idempotent, and drops the files of a removed host', async () => {
    const out = join(dir, 'cli-out');
    await mkdir(out, { recursive: true });
    const image = join(out, 'busybox.img');
    await writeFile(image, 'the image, not to be touched');
    const before = await stat(image);
    const config = join(dir, 'cli.yaml');
    await writeFile(config, `kernel:\n  image: ${kernel.image}\n`);
    const first = await domuJson(['configs', '--json', '--config', config, '--out', out, '--cache-dir', join(dir, 'cache')]);
    expect(first.r.exitCode, first.r.stderr).toBe(0);
    expect(first.s.configs!.files.sort()).toEqual([
      'hosts/test1/ifcfg-eth0',
      'hosts/test1/ifcfg-xenbr0',
      'hosts/test2/ifcfg-eth0',
      'hosts/test2/ifcfg-xenbr0',
      'storage/targets.conf',
      'xen/busybox.MIGRATION.md',
      'xen/test1/busybox.cfg',
      'xen/test2/busybox.cfg',
    ]);
    expect(await readFile(join(out, 'xen/test1/busybox.cfg'), 'utf8')).toContain(`kernel = "/scsistore/boot/vmlinuz-${kernel.release}"`);
    const after = await stat(image);
    expect([after.ino, after.mtimeMs, after.size]).toEqual([before.ino, before.mtimeMs, before.size]);

    const again = await domuJson(['configs', '--json', '--config', config, '--out', out, '--cache-dir', join(dir, 'cache')]);
    expect(again.s.configs).toMatchObject({ written: 0, unchanged: 8, removed: [] });

    await writeFile(config, `kernel:\n  image: ${kernel.image}\nhosts:\n  - { name: test1, address: 172.16.31.1, bridge: xenbr0 }\n`);
    const fewer = await domuJson(['configs', '--json', '--config', config, '--out', out, '--cache-dir', join(dir, 'cache')]);
    expect(fewer.r.exitCode, fewer.r.stderr).toBe(0);
    expect(fewer.s.configs!.removed.sort()).toEqual(['hosts/test2/ifcfg-eth0', 'hosts/test2/ifcfg-xenbr0', 'xen/test2/busybox.cfg']);
    expect(fewer.s.warnings.map((w) => w.message)).toContain('only one host (test1): there is no other Dom0 to migrate to');
    await expect(stat(join(out, 'xen/test2'))).rejects.toThrow();
  }, 120_000);

  it('a bad inventory is exit 2 with file, line and key; nothing is written', async () => {
    const out = join(dir, 'bad-out');
    const config = join(dir, 'bad.yaml');
    await writeFile(config, 'guest:\n  memory: 512M\nhosts:\n  - { name: a, address: 10.0.0.1, bridge: xenbr0 }\n  - { name: a, address: 10.0.0.1, bridge: xenbr0 }\n');
    const r = await domu(['configs', '--config', config, '--out', out]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain(`${config}:2:11: guest.memory: expected an integer number of MiB, got "512M" (write 512)`);
    expect(r.stderr).toContain(`${config}:5:13: hosts.1.name: duplicate host name "a" (already hosts.0.name)`);
    await expect(stat(out)).rejects.toThrow();
  });

  it('hosts that disagree are exit 2 naming host and key; --allow-inconsistent writes them with a warning', async () => {
    const out = join(dir, 'inconsistent-out');
    const config = join(dir, 'inconsistent.yaml');
    await writeFile(config, `kernel:\n  image: ${kernel.image}\nhosts:\n  - { name: a, address: 10.0.0.1, bridge: xenbr0 }\n  - { name: b, address: 10.0.0.2, bridge: xenbr1 }\n`);
    const r = await domu(['configs', '--config', config, '--out', out, '--cache-dir', join(dir, 'cache')]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('hosts.1.bridge (b): the bridge "xenbr1" differs from "xenbr0" on hosts.0 (a)');
    const ok = await domuJson(['configs', '--json', '--allow-inconsistent', '--config', config, '--out', out, '--cache-dir', join(dir, 'cache')]);
    expect(ok.r.exitCode, ok.r.stderr).toBe(0);
    expect(ok.s.warnings.map((w) => w.message).join('\n')).toContain('hosts.1.bridge (b)');
    expect(await readFile(join(out, 'xen/b/busybox.cfg'), 'utf8')).toContain('bridge=xenbr1');
  }, 60_000);
});

describe.skipIf(process.getuid?.() !== 0)('domu configs --publish onto a real loop-mounted ext4 store (needs root for mount)', () => {
  let store: string;
  let backing: string;
  beforeAll(async () => {
    store = join(dir, 'scsistore');
    backing = join(dir, 'store.ext4');
    await mkdir(store, { recursive: true });
    await writeFile(backing, '');
    await truncate(backing, 64 * 1048576);
    await execa('mke2fs', ['-q', '-t', 'ext4', '-F', backing]);
    await execa('mount', ['-o', 'loop', backing, store]);
  });
  afterAll(async () => {
    if (store) await execa('umount', [store]).catch(() => undefined);
  });

  const publishConfigs = (config: string, extra: string[] = []) =>
    domuJson(['configs', '--json', '--publish', '--store', store, '--config', config, '--out', join(dir, 'pub-out'), '--cache-dir', join(dir, 'cache'), ...extra]);

  it('publishes every config; a hand edit on the store is refused (exit 2) until --force, which keeps a .bak', async () => {
    const config = join(dir, 'pub.yaml');
    await writeFile(config, `kernel:\n  image: ${kernel.image}\n`);
    const first = await publishConfigs(config);
    expect(first.r.exitCode, first.r.stderr).toBe(0);
    expect(first.s.published!.written.sort()).toEqual(first.s.configs!.files.sort());
    // The configs name boot files that no build has published yet: said plainly.
    expect(first.s.warnings.map((w) => w.message).join('\n')).toContain(`the configs name boot/vmlinuz-${kernel.release}, which ${store} does not have yet`);
    const cfg = join(store, 'xen/test1/busybox.cfg');
    expect(await readFile(cfg, 'utf8')).toBe(await readFile(join(dir, 'pub-out', 'xen/test1/busybox.cfg'), 'utf8'));

    const edited = `${await readFile(cfg, 'utf8')}memory = 1024\n`;
    await writeFile(cfg, edited);
    await writeFile(config, `kernel:\n  image: ${kernel.image}\nguest:\n  memory: 768\n`);
    const refused = await publishConfigs(config);
    expect(refused.r.exitCode).toBe(2);
    expect(refused.r.stderr).toContain(`refusing to publish to ${store}: 1 file there was edited or made by hand: xen/test1/busybox.cfg; nothing was written`);
    expect(refused.r.stderr).toContain('xen/test1/busybox.cfg');
    expect(await readFile(cfg, 'utf8')).toBe(edited);
    expect(await readFile(join(store, 'xen/test2/busybox.cfg'), 'utf8')).toContain('memory = 512'); // nothing written

    const forced = await publishConfigs(config, ['--force']);
    expect(forced.r.exitCode, forced.r.stderr).toBe(0);
    expect(await readFile(`${cfg}.bak`, 'utf8')).toBe(edited);
    expect(await readFile(cfg, 'utf8')).toContain('memory = 768');
    expect(await readFile(join(store, 'xen/test2/busybox.cfg'), 'utf8')).toContain('memory = 768');
  }, 120_000);

  it('publish options without --publish, and a store that is not mounted, are bad input before any work', async () => {
    const r = await domu(['configs', '--force']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('--force only applies with --publish');
    const plain = join(dir, 'not-mounted');
    await mkdir(plain, { recursive: true });
    const u = await domu(['configs', '--publish', '--store', plain, '--out', join(dir, 'nm-out')]);
    expect(u.exitCode).toBe(2);
    expect(u.stderr).toContain(`the store ${plain} is not a mount point`);
    await expect(stat(join(dir, 'nm-out'))).rejects.toThrow(); // failed before rendering anything
  }, 60_000);
});

