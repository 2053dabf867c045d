// The `tgtadm --op show` parser on real output, captured from Debian's tgt 1.0.85 here
// (test/fixtures/tgtadm/): two targets, one with two LUNs and ACL 127.0.0.1, one whose backing
// store tgt-admin skipped (in use) with ACL ALL; and a target while QEMU's iSCSI client was
// logged in (an I_T nexus with its initiator and connection address).
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DomuError } from '../../src/core/errors.js';
import { parseTgtadmShow, tgtadmShownMB } from '../../src/lab/tgtadm-show.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/tgtadm/${name}`, import.meta.url), 'utf8');

describe('parseTgtadmShow', () => {
  it('two targets: LUNs with type, size, block size, backing store; ACLs', () => {
    const [t1, t2, ...rest] = parseTgtadmShow(fixture('show-two-targets.txt'));
    expect(rest).toEqual([]);
    expect(t1).toMatchObject({ tid: 1, iqn: 'iqn.2015-02.com.stu31:t1', system: { Driver: 'iscsi', State: 'ready' }, nexuses: [], accounts: [], acl: ['127.0.0.1'] });
    expect(t1!.luns.map(({ properties: _, ...l }) => l)).toEqual([
      { lun: 0, type: 'controller', sizeMB: 0, blockSize: 1, backingStoreType: 'null', backingStorePath: undefined, online: true, readonly: false },
      { lun: 1, type: 'disk', sizeMB: 67, blockSize: 512, backingStoreType: 'rdwr', backingStorePath: '/tmp/h16b/a.img', online: true, readonly: false },
      { lun: 2, type: 'disk', sizeMB: 100, blockSize: 512, backingStoreType: 'rdwr', backingStorePath: '/tmp/h16b/b.img', online: true, readonly: false },
    ]);
    expect(t1!.luns[1]!.properties).toMatchObject({ 'SCSI ID': 'IET     00010001', 'SCSI SN': 'beaf11', 'Thin-provisioning': 'No', 'Backing store flags': '' });
    expect(t2).toMatchObject({ tid: 2, iqn: 'iqn.x:t2', acl: ['ALL'] });
    expect(t2!.luns.map((l) => l.lun)).toEqual([0]);
  });

  it('a logged-in initiator: the I_T nexus with its initiator name and address', () => {
    const [t] = parseTgtadmShow(fixture('show-logged-in.txt'));
    expect(t!.nexuses).toEqual([{ nexus: 1, initiator: 'iqn.2008-11.org.linux-kvm', addresses: ['127.0.0.1'] }]);
    expect(t!.luns.map((l) => [l.lun, l.sizeMB])).toEqual([[0, 0], [1, 67]]);
    expect(t!.acl).toEqual(['127.0.0.1']);
  });

  it('no targets: an empty list; unknown sections are skipped', () => {
    expect(parseTgtadmShow('')).toEqual([]);
    const t = parseTgtadmShow('Target 3: iqn.a:b\n    Future information:\n        Whatever: 1\n    ACL information:\n        10.0.0.0/8\n');
    expect(t).toEqual([{ tid: 3, iqn: 'iqn.a:b', system: {}, nexuses: [], luns: [], accounts: [], acl: ['10.0.0.0/8'] }]);
  });

  it('output it cannot place is a one-line error naming the line', () => {
    expect(() => parseTgtadmShow('tgtadm: can\'t send the request to the tgt daemon')).toThrow(DomuError);
    expect(() => parseTgtadmShow('hello')).toThrow(/line 1 \("hello"\): expected "Target N: IQN"/);
    expect(() => parseTgtadmShow('Target 1: iqn.a:b\n  System information:')).toThrow(/line 2 .*multiple of 4/);
    expect(() => parseTgtadmShow('Target 1: iqn.a:b\n    LUN information:\n        LUN: x')).toThrow(/expected "LUN: N"/);
    expect(() => parseTgtadmShow('Target 1: iqn.a:b\n    LUN information:\n        LUN: 1\n            Size: big')).toThrow(/expected "Size: N MB, Block size: N"/);
  });

  it('tgtadm shows sizes in decimal megabytes, rounded down', () => {
    expect(tgtadmShownMB(64 * 1024 ** 2)).toBe(67);
    expect(tgtadmShownMB(100_000_256)).toBe(100);
    expect(tgtadmShownMB(1024 ** 3)).toBe(1074); // seen on the lab's 1 GiB guest LUN
    expect(tgtadmShownMB(1_293_942_784)).toBe(1294);
  });
});
