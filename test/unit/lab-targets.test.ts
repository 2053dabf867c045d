// targets.conf made the lab's (src/lab/targets.ts): on the files domu generates (rendered with the
// default description, store.disk file: one plain backing-store line; and with store.disk lun:
// two <backing-store> blocks with their lun) and on hand-written files with plain lines, whose
// LUN numbers tgt-admin takes from the sorted paths.
import { describe, expect, it } from 'vitest';
import { DomuError } from '../../src/core/errors.js';
import { LAB_MARK, labTargetsConf } from '../../src/lab/targets.js';
import { loadDescription } from '../../src/model/description.js';
import { bootNames } from '../../src/pipeline/plan.js';
import { renderConfigs } from '../../src/stages/xenconfigs.js';

const generated = (text?: string): string => {
  const desc = loadDescription(text === undefined ? {} : { text });
  return renderConfigs(desc, bootNames(desc, '6.1.0-56-amd64')).files.find((f) => f.path === 'storage/targets.conf')!.content;
};
const LUN = 'store:\n  disk: lun\n';

/** The DomuError message of a refused call. */
function refused(text: string, files: string[]): string {
  try {
    labTargetsConf(text, { backingFiles: files });
  } catch (e) {
    expect(e).toBeInstanceOf(DomuError);
    return (e as DomuError).message;
  }
  throw new Error('not refused');
}

const TWO_LUNS = [
  '# two LUNs: the store and the guest disk',
  '<target iqn.2015-02.com.stu31:t1>',
  '    backing-store /dev/sda3',
  '\tbacking-store = /srv/guest/busybox.img',
  '    initiator-address 172.16.31.0/24',
  '</target>',
  '',
].join('\n');

/** The lines of `after` that are not in `before`, and those of `before` that are gone. */
function diff(before: string, after: string): { added: string[]; removed: string[] } {
  const b = before.split('\n');
  const a = after.split('\n');
  return { added: a.filter((l) => !b.includes(l)), removed: b.filter((l) => !a.includes(l)) };
}

/** `lab` is `text` with the lines `removed` gone and `added` new, every other line byte for byte. */
function expectChanged(text: string, lab: string, removed: string[], added: string[]): void {
  expect(diff(text, lab)).toEqual({ added, removed });
  // Taking the lab's lines out gives the generated file with the replaced lines out.
  const unmarked = (s: string, drop: string[]) => s.split('\n').filter((l) => !drop.includes(l)).join('\n');
  expect(unmarked(lab, added)).toBe(unmarked(text, removed));
}

describe('labTargetsConf', () => {
  it('the generated file: backing-store → the scratch file, initiator-address → 127.0.0.1, each marked and said; the rest byte for byte', () => {
    const text = generated();
    expect(text).toMatch(/^    backing-store \/dev\/sda3$/m);
    expect(text).toMatch(/^    initiator-address 172\.16\.31\.0\/24$/m);
    const lab = labTargetsConf(text, { backingFiles: ['/lab/store.img'] });

    expect(lab.iqn).toBe('iqn.2015-02.com.stu31:t1');
    expect(lab.luns).toEqual([{ lun: 1, generated: '/dev/sda3', lab: '/lab/store.img' }]);
    expect(lab.acl).toEqual(['127.0.0.1']);
    expect(lab.changes).toEqual([
      "targets.conf: backing-store /dev/sda3 → /lab/store.img: LUN 1's backing store on the storage server does not exist here; the lab uses a scratch file in its directory",
      "targets.conf: initiator-address 172.16.31.0/24 → 127.0.0.1: the lab's Dom0s reach tgtd from 127.0.0.1 (QEMU's iSCSI client), not from the inventory's network",
    ]);
    expectChanged(text, lab.text, ['    backing-store /dev/sda3', '    initiator-address 172.16.31.0/24'], [
      `    ${LAB_MARK} LUN 1 was "backing-store /dev/sda3": not on this machine, a scratch file instead`,
      '    backing-store /lab/store.img',
      `    ${LAB_MARK} was "initiator-address 172.16.31.0/24": the lab's Dom0s connect from 127.0.0.1`,
      '    initiator-address 127.0.0.1',
    ]);
    expect(lab.text.split('\n').slice(0, 5)).toEqual(text.split('\n').slice(0, 5)); // the generated header, sha256 line included
    expect(lab.text.endsWith('</target>\n')).toBe(true);
  });

  it('two LUNs in one target: each backing-store gets its file in order (LUN 1, 2), whatever its form', () => {
    const lab = labTargetsConf(TWO_LUNS, { backingFiles: ['/lab/lun1.img', '/lab/lun2.img'] });
    expect(lab.luns).toEqual([
      { lun: 1, generated: '/dev/sda3', lab: '/lab/lun1.img' },
      { lun: 2, generated: '/srv/guest/busybox.img', lab: '/lab/lun2.img' },
    ]);
    expect(lab.changes).toHaveLength(3);
    expect(lab.changes[1]).toBe("targets.conf: backing-store /srv/guest/busybox.img → /lab/lun2.img: LUN 2's backing store on the storage server does not exist here; the lab uses a scratch file in its directory");
    expect(lab.text).toBe(
      [
        '# two LUNs: the store and the guest disk',
        '<target iqn.2015-02.com.stu31:t1>',
        `    ${LAB_MARK} LUN 1 was "backing-store /dev/sda3": not on this machine, a scratch file instead`,
        '    backing-store /lab/lun1.img',
        `\t${LAB_MARK} LUN 2 was "backing-store /srv/guest/busybox.img": not on this machine, a scratch file instead`,
        '\tbacking-store /lab/lun2.img',
        `    ${LAB_MARK} was "initiator-address 172.16.31.0/24": the lab's Dom0s connect from 127.0.0.1`,
        '    initiator-address 127.0.0.1',
        '</target>',
        '',
      ].join('\n'),
    );
  });

  it('LUN numbers are tgt-admin\'s: by the sorted paths, not by line order; the lab files must sort the same way', () => {
    const text = '<target iqn.a:b>\n  backing-store /srv/guest.img\n  backing-store /dev/sda3\n</target>\n';
    const lab = labTargetsConf(text, { backingFiles: ['/lab/lun2-guest.img', '/lab/lun1-store.img'] });
    expect(lab.luns).toEqual([
      { lun: 1, generated: '/dev/sda3', lab: '/lab/lun1-store.img' },
      { lun: 2, generated: '/srv/guest.img', lab: '/lab/lun2-guest.img' },
    ]);
    expect(lab.text).toContain(`  ${LAB_MARK} LUN 2 was "backing-store /srv/guest.img"`);
    expect(() => labTargetsConf(text, { backingFiles: ['/lab/guest.img', '/lab/store.img'] })).toThrow(
      "the lab's backing files sort as /lab/guest.img, /lab/store.img, the storage server's as /dev/sda3, /srv/guest.img: tgt-admin numbers LUNs in the sorted order of the paths, so LUN numbers would differ between the lab and the storage server",
    );
    // Byte order, as Perl's sort: upper case before lower case, '-' before '.'.
    expect(labTargetsConf(text, { backingFiles: ['/lab/b', '/lab/B'] }).luns.map((l) => l.lab)).toEqual(['/lab/B', '/lab/b']);
  });

  it('refuses two equal backing-store paths: tgt-admin would merge them into one LUN', () => {
    expect(() => labTargetsConf(TWO_LUNS.replace('/srv/guest/busybox.img', '/dev/sda3'), { backingFiles: ['/lab/1', '/lab/2'] })).toThrow(/^targets\.conf names the backing store \/dev\/sda3 twice: tgt-admin merges/);
    expect(() => labTargetsConf(TWO_LUNS, { backingFiles: ['/lab/1', '/lab/1'] })).toThrow(/^the lab names the backing store \/lab\/1 twice/);
  });

  it('CRLF lines keep their CR; an initiator-address already 127.0.0.1 is no change; no initiator-address means ALL', () => {
    const crlf = labTargetsConf('<target iqn.a:b>\r\n  backing-store /x\r\n  initiator-address 127.0.0.1\r\n</target>\r\n', { backingFiles: ['/lab/x.img'] });
    expect(crlf.text).toBe(`<target iqn.a:b>\r\n  ${LAB_MARK} LUN 1 was "backing-store /x": not on this machine, a scratch file instead\r\n  backing-store /lab/x.img\r\n  initiator-address 127.0.0.1\r\n</target>\r\n`);
    expect(crlf.changes).toHaveLength(1);
    expect(crlf.acl).toEqual(['127.0.0.1']);
    expect(labTargetsConf('<target iqn.a:b>\n backing-store /x\n</target>\n', { backingFiles: ['/l'] }).acl).toEqual(['ALL']);
  });

  it('refuses a file without a target, more than one target, and a backing-store count the mapping does not match', () => {
    expect(refused('# nothing here\n', [])).toBe('targets.conf has no <target> block: nothing for the lab storage server to serve');
    expect(refused('<target iqn.a:1>\n</target>\n<target iqn.a:2>\n</target>\n', [])).toMatch(/has 2 targets \(iqn\.a:1, iqn\.a:2\)/);
    expect(refused(TWO_LUNS, ['/lab/one.img'])).toBe('targets.conf has 2 backing-store lines but the lab was given 1 backing file for them');
    expect(refused(generated(), [])).toBe('targets.conf has 1 backing-store line but the lab was given 0 backing files for them');
    expect(refused(generated(), ['/lab/a b.img'])).toMatch(/needs an absolute path without white space/);
    expect(refused(generated(), ['lab.img'])).toMatch(/needs an absolute path/);
    expect(refused('<target iqn.a:b>\n  direct-store /dev/sg1\n</target>\n', [])).toBe('targets.conf line 2 ("direct-store /dev/sg1"): the lab knows only backing-store lines and <backing-store> blocks');
    expect(refused('<target iqn.a:b>\n  <direct-store /dev/sg1>\n  </direct-store>\n</target>\n', [])).toMatch(/^targets\.conf line 2 .*the lab knows only/);
    expect(refused(generated(LUN), ['/lab/one.img'])).toBe('targets.conf has 2 backing-store lines but the lab was given 1 backing file for them');
  });
});

describe('labTargetsConf on <backing-store> blocks (store.disk: lun)', () => {
  it('the generated file: each block\'s opening line → the scratch file, its lun line kept; LUNs as the blocks say; the rest byte for byte', () => {
    const text = generated(LUN);
    const lab = labTargetsConf(text, { backingFiles: ['/lab/store.img', '/lab/guest.img'] });
    expect(lab.luns).toEqual([
      { lun: 1, generated: '/dev/sda3', lab: '/lab/store.img' },
      { lun: 2, generated: '/dev/sda4', lab: '/lab/guest.img' },
    ]);
    expect(lab.changes.slice(0, 2)).toEqual([
      "targets.conf: backing-store /dev/sda3 → /lab/store.img: LUN 1's backing store on the storage server does not exist here; the lab uses a scratch file in its directory",
      "targets.conf: backing-store /dev/sda4 → /lab/guest.img: LUN 2's backing store on the storage server does not exist here; the lab uses a scratch file in its directory",
    ]);
    expectChanged(text, lab.text, ['    <backing-store /dev/sda3>', '    <backing-store /dev/sda4>', '    initiator-address 172.16.31.0/24'], [
      `    ${LAB_MARK} LUN 1 was "<backing-store /dev/sda3>": not on this machine, a scratch file instead`,
      '    <backing-store /lab/store.img>',
      `    ${LAB_MARK} LUN 2 was "<backing-store /dev/sda4>": not on this machine, a scratch file instead`,
      '    <backing-store /lab/guest.img>',
      `    ${LAB_MARK} was "initiator-address 172.16.31.0/24": the lab's Dom0s connect from 127.0.0.1`,
      '    initiator-address 127.0.0.1',
    ]);
    expect(lab.text).toContain('    <backing-store /lab/store.img>\n        lun 1\n    </backing-store>\n');
  });

  it('paths that sort the other way round, lab files in any order: the LUNs are the blocks\' own, reported in LUN order', () => {
    const text = generated(`${LUN}  backing_store: /srv/store.img\n  disk_backing_store: /dev/sdb\n`);
    const lab = labTargetsConf(text, { backingFiles: ['/lab/z-store.img', '/lab/a-guest.img'] });
    expect(lab.luns).toEqual([
      { lun: 1, generated: '/srv/store.img', lab: '/lab/z-store.img' },
      { lun: 2, generated: '/dev/sdb', lab: '/lab/a-guest.img' },
    ]);
    // Written in line order whatever the LUNs: the guest's block second, with LUN 2.
    const swapped = '<target iqn.a:b>\n  <backing-store /b>\n    lun 7\n  </backing-store>\n  <backing-store /a>\n    lun = 3\n  </backing-store>\n</target>\n';
    const l = labTargetsConf(swapped, { backingFiles: ['/lab/b', '/lab/a'] });
    expect(l.luns).toEqual([
      { lun: 3, generated: '/a', lab: '/lab/a' },
      { lun: 7, generated: '/b', lab: '/lab/b' },
    ]);
    expect(l.text.split('\n').slice(1, 4)).toEqual([`  ${LAB_MARK} LUN 7 was "<backing-store /b>": not on this machine, a scratch file instead`, '  <backing-store /lab/b>', '    lun 7']);
  });

  it('refuses what would not give each store the LUN the file means', () => {
    const block = (path: string, inner: string) => `  <backing-store ${path}>\n${inner}  </backing-store>\n`;
    const target = (...parts: string[]) => `<target iqn.a:b>\n${parts.join('')}</target>\n`;
    expect(refused(target(block('/x', '    write-cache off\n')), ['/l'])).toBe('targets.conf line 4 ("</backing-store>"): the <backing-store /x> block has no lun line: tgt-admin would pick its LUN number itself');
    expect(refused(target(block('/x', '    lun 1\n'), block('/y', '    lun 1\n')), ['/l1', '/l2'])).toBe('targets.conf gives LUN 1 to both /x and /y: tgt-admin would leave one of them out');
    expect(refused(target(block('/x', '    lun 1\n    lun 2\n')), ['/l'])).toMatch(/^targets\.conf line 4 \("lun 2"\): a second lun line in the <backing-store \/x> block$/);
    expect(refused(target(block('/x', '    lun 0\n')), ['/l'])).toMatch(/line 3 \("lun 0"\): expected a LUN number from 1 up/);
    expect(refused(target(block('/x', '    lun 1\n'), block('/x', '    lun 2\n')), ['/l1', '/l2'])).toMatch(/^targets\.conf names the backing store \/x twice: tgt-admin merges/);
    expect(refused(target(block('/x', '    lun 1\n'), '  backing-store /y\n'), ['/l1', '/l2'])).toMatch(/both backing-store lines and <backing-store> blocks .*Config::General/);
    expect(refused(target('  lun 2\n  backing-store /y\n'), ['/l'])).toBe('targets.conf line 2 ("lun 2"): a lun line outside a <backing-store> block');
    expect(refused(target('  <backing-store /x>\n    lun 1\n'), ['/l'])).toMatch(/line 4 \("<\/target>"\): the <backing-store \/x> block is not closed/);
  });
});
