// The pure parts of the nested Xen host: QEMU's -initrd value for Xen (commas doubled), Xen's
// command line, the per-run parameter files and their archive, the console split.
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { dom0ParamFiles, dom0ParamsArchive } from '../../src/xen/dom0-initramfs.js';
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
    expect(dom0ParamFiles(good)).toEqual({ hostname: 'xenhost1\n', bridge: 'xenbr0\n', address: '172.16.31.1\n', prefix: '16\n', store_device: '/dev/vda\n', store_path: '/scsistore\n', guest_name: 'busybox\n' });
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
  ])('refuse a bad %s in one line', (name, p) => {
    expect(() => dom0ParamFiles(p)).toThrow(new RegExp(`^dom0 parameter ${name} `));
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
