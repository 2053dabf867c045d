// The pure parts of the nested Xen host: QEMU's -initrd value for Xen (commas doubled), Xen's
// command line, the per-run parameter files and their archive, the console split.
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { dom0ParamFiles, dom0ParamsArchive } from '../../src/xen/dom0-params.js';
import { splitConsole, xenArgs } from '../../src/xen/nested-xen.js';
import { multibootModules, qemuArgs } from '../../src/xen/qemu.js';
import { xenFromMeta } from '../../src/xen/xen-packages.js';

describe('multibootModules', () => {
  it('joins modules with single commas and doubles every comma inside them', () => {
    expect(multibootModules([{ file: '/k/vmlinuz', args: 'console=hvc0 foo=a,b' }, { file: '/w/dom0,1.gz' }])).toBe('/k/vmlinuz console=hvc0 foo=a,,b,/w/dom0,,1.gz');
  });
  it('refuses a file name with white space', () => {
    expect(() => multibootModules([{ file: '/a b/vmlinuz' }])).toThrow(/white space/);
  });
});

describe('qemuArgs for Xen', () => {
  const spec = { accel: 'tcg' as const, kernel: 'xen', append: xenArgs(768), memoryMiB: 2048, disks: ['/s/store.img'], logFile: 'l' };
  it('passes the CPU model under TCG and leaves out -snapshot for writable disks', () => {
    const a = qemuArgs({ ...spec, cpu: 'qemu64,+svm,+npt', writable: true });
    expect(a.slice(a.indexOf('-cpu'), a.indexOf('-cpu') + 2)).toEqual(['-cpu', 'qemu64,+svm,+npt']);
    expect(a).not.toContain('-snapshot');
    expect(a).toContain('file=/s/store.img,format=raw,if=virtio');
  });
  it('keeps -snapshot by default', () => {
    expect(qemuArgs(spec)).toContain('-snapshot');
    expect(qemuArgs(spec)).not.toContain('-cpu');
  });
  it("gives Xen dom0's memory with its maximum", () => {
    expect(xenArgs(768)).toContain('dom0_mem=768M,max:768M');
  });
});

describe('dom0 parameters', () => {
  const good = { hostname: 'xenhost1', bridge: { name: 'xenbr0', address: '172.16.31.1', prefix: 16 }, store: { device: '/dev/vda', path: '/scsistore' }, guestName: 'busybox' };
  it('are one value per file', () => {
    expect(dom0ParamFiles(good)).toEqual({ hostname: 'xenhost1\n', bridge: 'xenbr0\n', address: '172.16.31.1\n', prefix: '16\n', store_device: '/dev/vda\n', store_path: '/scsistore\n', store_options: 'rw\n', guest_name: 'busybox\n' });
    expect(dom0ParamFiles({ hostname: 'h' })).toEqual({ hostname: 'h\n' });
  });
  it.each([
    ['hostname', { ...good, hostname: 'a;reboot' }],
    ['address', { ...good, bridge: { name: 'xenbr0', address: '1.2.3.256' } }],
    ['bridge', { ...good, bridge: { name: 'a-name-longer-than-15' } }],
    ['store_path', { ...good, store: { device: '/dev/vda', path: '/a/../etc' } }],
    ['store_path', { ...good, store: { device: '/dev/vda', path: 'relative' } }],
    ['guest_name', { ...good, guestName: '$(x)' }],
    ['prefix', { ...good, bridge: { name: 'b', address: '1.2.3.4', prefix: 33 } }],
    ['nic', { ...good, bridge: { name: 'xenbr0', nic: 'eth0 up' } }],
    ['store_device', { ...good, store: { device: '/dev/disk/../../etc/passwd', path: '/scsistore' } }],
    ['store_device', { ...good, store: { device: '/dev/disk/by-path/a b', path: '/scsistore' } }],
    ['peer_address', { ...good, peerAddress: '172.16.31.2; reboot' }],
    ['disk_links', { ...good, diskLinks: [{ serial: 'lun-1', path: '/etc/passwd' }] }],
    ['disk_links', { ...good, diskLinks: [{ serial: 'lun 1', path: '/dev/disk/x' }] }],
  ])('refuse a bad %s in one line', (name, p) => {
    expect(() => dom0ParamFiles(p)).toThrow(new RegExp(`^dom0 parameter ${name} `));
  });
  it("take the lab's by-path LUN links, a read-only or deferred store mount and a peer", () => {
    const byPath = '/dev/disk/by-path/ip-172.16.31.3:3260-iscsi-iqn.2015-02.com.stu31:t1-lun-1';
    const f = dom0ParamFiles({ ...good, bridge: { ...good.bridge, nic: 'eth0' }, diskLinks: [{ serial: 'lun-1', path: byPath }], store: { device: byPath, path: '/scsistore', mount: 'ro' }, peerAddress: '172.16.31.2' });
    expect(f).toMatchObject({ nic: 'eth0\n', disk_links: `lun-1 ${byPath}\n`, store_device: `${byPath}\n`, store_options: 'ro\n', peer_address: '172.16.31.2\n' });
    expect(dom0ParamFiles({ ...good, store: { device: byPath, path: '/scsistore', mount: 'off' } }).store_options).toBe('off\n');
  });
  it('put the ssh keys where dropbear looks, private ones mode 0600, and need an address to listen on', async () => {
    const ssh = { hostKey: Buffer.from('HOSTKEY'), clientKey: Buffer.from('CLIENTKEY'), authorizedKeys: 'ssh-ed25519 AAAA\n', knownHosts: '172.16.31.2 ssh-ed25519 BBBB\n' };
    const cpio = gunzipSync(await dom0ParamsArchive({ ...good, ssh })).toString('latin1');
    for (const [path, mode] of [['etc/dropbear/dropbear_ed25519_host_key', 0o100600], ['root/.ssh/id_dropbear', 0o100600], ['root/.ssh/authorized_keys', 0o100600], ['root/.ssh/known_hosts', 0o100644], ['root/.ssh', 0o40700]] as const) {
      const at = cpio.indexOf(`${path}\0`);
      expect(at, path).toBeGreaterThan(0);
      // newc header: 110 bytes before the name; c_mode is the second 8-hex field (offset 14).
      const header = cpio.slice(cpio.lastIndexOf('070701', at), at);
      expect(parseInt(header.slice(14, 22), 16), path).toBe(mode);
    }
    expect(() => dom0ParamFiles({ hostname: 'h', ssh })).toThrow(/needs the bridge address/);
  });
  it('go into a small gzip cpio under etc/domu-lab, the same bytes every time', async () => {
    const a = await dom0ParamsArchive(good);
    expect((await dom0ParamsArchive(good)).equals(a)).toBe(true);
    const cpio = gunzipSync(a).toString('latin1');
    expect(cpio.startsWith('070701')).toBe(true);
    expect(cpio).toContain('etc/domu-lab/store_path\0');
    expect(cpio).toContain('/scsistore\n');
    expect(cpio).toContain('TRAILER!!!');
    expect(a.length).toBeLessThan(1024);
  });
});

describe('splitConsole', () => {
  it("separates Xen's lines, guest lines (prefix removed) and dom0's", () => {
    const s = splitConsole('(XEN) Xen version 4.17.7\n[    1.0] Linux\nG| guest says hi\ndomu-dom0-ready\n\n');
    expect(s).toEqual({ xen: ['(XEN) Xen version 4.17.7'], dom0: ['[    1.0] Linux', 'domu-dom0-ready'], guest: ['guest says hi'] });
  });
});

describe('xenFromMeta', () => {
  it('takes major.minor from the hypervisor dependency', () => {
    expect(xenFromMeta({ package: 'xen-system-amd64', version: '4.19.1-1', depends: 'xen-hypervisor-4.19-amd64, xen-hypervisor-common, xen-utils-4.19' })).toEqual({ hypervisor: 'xen-hypervisor-4.19-amd64', utils: 'xen-utils-4.19', majorMinor: '4.19' });
  });
  it('refuses a meta package without a hypervisor or with tools of another version', () => {
    expect(() => xenFromMeta({ package: 'm', version: '1', depends: 'xen-utils-4.17' })).toThrow(/no xen-hypervisor/);
    expect(() => xenFromMeta({ package: 'm', version: '1', depends: 'xen-hypervisor-4.17-amd64, xen-utils-4.18' })).toThrow(/not on xen-utils-4.17/);
  });
});
