// The xen configs stage without I/O: golden files for the reference inventory (both toolstacks,
// every host file), the derived MAC/UUID, quoting refusals, migration consistency, and the
// generated-file header. Refresh the golden files after a deliberate change with
// UPDATE_GOLDEN=1 npx vitest run test/unit/xenconfigs.test.ts (and review the diff).
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InputError } from '../../src/core/errors.js';
import { checkHeader } from '../../src/store/genheader.js';
import { derivedMac, derivedUuid, quoted } from '../../src/xen/xencfg.js';
import { loadDescription } from '../../src/model/description.js';
import { bootNames } from '../../src/pipeline/plan.js';
import { fileDiskWarning, renderConfigs } from '../../src/stages/xenconfigs.js';
import { lunDevicePath } from '../../src/xen/lun.js';
import { PROJECT_ROOT } from '../../src/core/paths.js';

const GOLDEN = join(PROJECT_ROOT, 'test', 'fixtures', 'golden');
const RELEASE = '6.1.0-56-amd64';

function listFiles(dir: string): string[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => relative(dir, join(e.parentPath, e.name)))
    .sort();
}

// xl: the default (PVH); xl-pv: xen.type pv; xm: the reference lab's dialect (always PV);
// xl-lun, xm-lun: store.disk lun (the guest's disk is LUN 2 by its by-path name).
describe.each([
  ['xl', 'xen:\n  toolstack: xl\n'],
  ['xl-pv', 'xen:\n  toolstack: xl\n  type: pv\n'],
  ['xm', 'xen:\n  toolstack: xm\n'],
  ['xl-lun', 'xen:\n  toolstack: xl\nstore:\n  disk: lun\n'],
  ['xm-lun', 'xen:\n  toolstack: xm\nstore:\n  disk: lun\n'],
] as const)('golden files of the reference inventory (%s)', (variant, text) => {
  const desc = loadDescription({ text });
  const result = renderConfigs(desc, bootNames(desc, RELEASE));
  const dir = join(GOLDEN, variant);
  if (process.env.UPDATE_GOLDEN) {
    for (const f of result.files) {
      mkdirSync(dirname(join(dir, f.path)), { recursive: true });
      writeFileSync(join(dir, f.path), f.content);
    }
  }

  it('renders exactly the golden set of files', () => {
    expect(result.files.map((f) => f.path).sort()).toEqual(listFiles(dir));
  });

  it.each(result.files.map((f) => [f.path, f.content]))('%s equals its golden file', (path, content) => {
    expect(content).toBe(readFileSync(join(dir, path), 'utf8'));
  });

  it('every file carries an intact generated-file header', () => {
    for (const f of result.files) expect(checkHeader(f.content), f.path).toEqual({ generated: true, intact: true });
  });
});

describe('derived values', () => {
  it('MAC inside 00:16:3e with the next bit clear, UUID version 5 layout; both stable per name', () => {
    for (const name of ['busybox', 'web-1', 'a']) {
      const mac = derivedMac(name);
      expect(mac).toMatch(/^00:16:3e:[0-7][0-9a-f](:[0-9a-f]{2}){2}$/);
      expect(derivedMac(name)).toBe(mac);
      expect(derivedUuid(name)).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    }
    expect(derivedMac('busybox')).not.toBe(derivedMac('busybox2'));
    expect(derivedUuid('busybox')).not.toBe(derivedUuid('busybox2'));
  });

  it('a given MAC and maxmem are written as given', () => {
    const d = loadDescription({ text: 'guest:\n  mac: 00:16:3E:AA:BB:CC\n  memory: 256\n  maxmem: 1024\n' });
    const cfg = renderConfigs(d, bootNames(d, RELEASE)).files.find((f) => f.path === 'xen/test1/busybox.cfg')!.content;
    expect(cfg).toContain("vif = [ 'mac=00:16:3e:aa:bb:cc, bridge=xenbr0' ]");
    expect(cfg).toMatch(/^memory = 256$/m);
    expect(cfg).toMatch(/^maxmem = 1024$/m);
  });
});

describe('quoting', () => {
  it.each([
    ['a"b', 'a quote'],
    ["a'b", 'a quote'],
    ['a\\b', 'a backslash'],
    ['a#b', 'a # (a comment in config files)'],
    ['a\nb', 'a control character'],
    ['a\tb', 'a control character'],
  ])('%j is refused naming the key', (value, what) => {
    try {
      quoted(value, 'guest.extra');
      throw new Error('no error');
    } catch (e) {
      expect(e).toBeInstanceOf(InputError);
      expect((e as Error).message).toBe(`guest.extra: ${JSON.stringify(value)} contains ${what}, which cannot be written safely into a Xen or host config`);
    }
  });
  it('plain values are double-quoted', () => {
    expect(quoted('/scsistore/busybox.img', 'disk')).toBe('"/scsistore/busybox.img"');
  });
});

describe('migration consistency', () => {
  const twoHosts = (b: string) => loadDescription({ text: `hosts:\n  - { name: a, address: 10.0.0.1, bridge: xenbr0 }\n  - { name: b, address: 10.0.0.2, ${b} }\n` });

  it.each([
    ['bridge: xenbr1', 'hosts.1.bridge (b): the bridge "xenbr1" differs from "xenbr0" on hosts.0 (a): live migration needs the same bridge on every host'],
    ['bridge: xenbr0, store_path: /mnt/store', 'hosts.1.store_path (b): the disk target "/mnt/store/busybox.img" differs from "/scsistore/busybox.img" on hosts.0 (a): live migration needs the same disk path on every host'],
    ['bridge: xenbr0, kernel: /boot/vmlinuz-other', `hosts.1.kernel (b): the kernel "/boot/vmlinuz-other" differs from "/scsistore/boot/vmlinuz-${RELEASE}" on hosts.0 (a): live migration needs the same kernel on every host`],
  ])('host b with %s fails naming host and key', (b, message) => {
    const desc = twoHosts(b);
    try {
      renderConfigs(desc, bootNames(desc, RELEASE));
      throw new Error('no error');
    } catch (e) {
      expect(e).toBeInstanceOf(InputError);
      expect((e as Error).message.split('\n')).toContain(message);
      expect((e as InputError).hint).toContain('--allow-inconsistent');
    }
  });

  it('--allow-inconsistent writes them with a warning', () => {
    const d = twoHosts('bridge: xenbr0, store_path: /mnt/store');
    const r = renderConfigs(d, bootNames(d, RELEASE), { allowInconsistent: true });
    // Kernel and ramdisk live on the store too: all three paths differ on b.
    expect(r.warnings.map((w) => w.split(' ')[0])).toEqual(['hosts.1.kernel', 'hosts.1.ramdisk', 'hosts.1.store_path']);
    expect(r.files.find((f) => f.path === 'xen/b/busybox.cfg')!.content).toContain('target=/mnt/store/busybox.img');
  });

  it('kernel.ship false names the configured kernel; auto is then an error', () => {
    const d = loadDescription({ text: 'kernel:\n  ship: false\n  image: /boot/vmlinuz-5.10.0-1-amd64\n  ramdisk: none\n' });
    const cfg = renderConfigs(d, bootNames(d, RELEASE)).files.find((f) => f.path === 'xen/test1/busybox.cfg')!.content;
    expect(cfg).toContain('kernel = "/boot/vmlinuz-5.10.0-1-amd64"');
    expect(cfg).not.toMatch(/^ramdisk/m);
    const auto = loadDescription({ text: 'kernel:\n  ship: false\n' });
    expect(() => renderConfigs(auto, bootNames(auto, RELEASE))).toThrow(/kernel\.ship is false and kernel\.image is auto/);
  });
});

describe('store.disk lun', () => {
  const lun = (more = '') => loadDescription({ text: `store:\n  disk: lun\n  server: 10.1.2.3\n  iqn: iqn.2020-01.org.example:guests\n${more}` });

  it('the disk is the by-path name of LUN 2 on every host, whatever their store_path; targets.conf gets a second backing store, both with their LUN', () => {
    const d = lun('hosts:\n  - { name: a, address: 10.0.0.1, bridge: xenbr0, store_path: /mnt/a, kernel: /boot/k, ramdisk: /boot/r }\n  - { name: b, address: 10.0.0.2, bridge: xenbr0, store_path: /mnt/b, kernel: /boot/k, ramdisk: /boot/r }\n');
    const path = '/dev/disk/by-path/ip-10.1.2.3:3260-iscsi-iqn.2020-01.org.example:guests-lun-2';
    expect(lunDevicePath(d)).toBe(path);
    const r = renderConfigs(d, bootNames(d, RELEASE));
    expect(r.domain.disk).toBe(path);
    for (const h of ['a', 'b']) expect(r.files.find((f) => f.path === `xen/${h}/busybox.cfg`)!.content).toContain(`disk = [ 'format=raw, vdev=xvda, access=rw, target=${path}' ]`);
    const conf = r.files.find((f) => f.path === 'storage/targets.conf')!.content;
    expect(conf).toContain('\n    <backing-store /dev/sda3>\n        lun 1\n    </backing-store>\n    <backing-store /dev/sda4>\n        lun 2\n    </backing-store>\n');
    expect(conf).not.toMatch(/^\s*backing-store\b/m);
  });

  it('the LUN numbers are explicit, so paths that sort the other way round still give the store LUN 1 and the guest LUN 2', () => {
    // tgt-admin would number plain backing-store lines /dev/sdb (the guest) 1, /srv/store.img 2.
    const d = lun('  backing_store: /srv/store.img\n  disk_backing_store: /dev/sdb\n');
    const conf = renderConfigs(d, bootNames(d, RELEASE)).files.find((f) => f.path === 'storage/targets.conf')!.content;
    expect(conf.match(/^ *(<backing-store .*|lun .*)$/gm)).toEqual(['    <backing-store /srv/store.img>', '        lun 1', '    <backing-store /dev/sdb>', '        lun 2']);
  });

  it('the same backing store for both LUNs is refused naming store.disk_backing_store; file ignores it', () => {
    expect(() => lun('  disk_backing_store: /dev/sda3\n')).toThrow(/store\.disk_backing_store: expected a backing store of its own for the guest's LUN, got store\.backing_store's "\/dev\/sda3"/);
    expect(() => loadDescription({ text: 'store:\n  disk: lvm\n' })).toThrow(/store\.disk: expected one of file, lun, got "lvm"/);
    expect(() => loadDescription({ text: 'store:\n  disk_backing_store: sda4\n' })).toThrow(/store\.disk_backing_store: expected an absolute path like \/dev\/sda4, got "sda4"/);
    expect(loadDescription({ text: 'store:\n  disk_backing_store: /dev/sda3\n' }).store.disk).toBe('file');
  });

  it('the corruption warning: file with two hosts only', () => {
    const two = loadDescription({});
    expect(fileDiskWarning(two)).toMatch(/^store\.disk: file with 2 hosts: .*\/scsistore\/busybox\.img.*silent corruption\. Use store\.disk: lun$/);
    expect(fileDiskWarning(lun())).toBeUndefined();
    expect(fileDiskWarning(loadDescription({ text: 'hosts:\n  - { name: a, address: 10.0.0.1, bridge: xenbr0 }\n' }))).toBeUndefined();
  });

  it('MIGRATION.md of store.disk file states the corruption risk with two hosts, not with one', () => {
    const migration = (d: ReturnType<typeof loadDescription>) => renderConfigs(d, bootNames(d, RELEASE)).files.find((f) => f.path === 'xen/busybox.MIGRATION.md')!.content;
    expect(migration(loadDescription({}))).toMatch(/not safe to migrate between these hosts\.\*\*[^]*silent corruption\. Use\n`store\.disk: lun`/);
    expect(migration(loadDescription({ text: 'hosts:\n  - { name: a, address: 10.0.0.1, bridge: xenbr0 }\n' }))).not.toContain('silent corruption');
    expect(migration(lun())).not.toContain('silent corruption');
  });
});
