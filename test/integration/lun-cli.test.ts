// store.disk through the real CLI: the corruption warning of store.disk file with several hosts
// (once a run, as a warning line), the lun layout in the rendered configs and the summary, and
// --lun-device's refusals, all before any image work.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { domu, domuJson } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
const RISK = /^store\.disk: file with 3 hosts: the guest's disk is the image file \/scsistore\/busybox\.img on an ext4 store mounted read-write on several Dom0s; .*silent corruption\. Use store\.disk: lun$/;

/** A description with three hosts and a kernel named by path (no kernel stage), plus `more`. */
async function config(name: string, more = ''): Promise<string> {
  const path = join(dir, `${name}.yaml`);
  const hosts = [1, 2, 3].map((i) => `  - { name: h${i}, address: 172.16.31.${10 + i}, bridge: xenbr0 }`).join('\n');
  await writeFile(path, `kernel:\n  ship: false\n  image: /boot/vmlinuz-test\n  ramdisk: none\nhosts:\n${hosts}\n${more}`);
  return path;
}

beforeAll(async () => {
  dir = await tempDir('domu-lun-cli-');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('store.disk through domu configs', () => {
  it('file with three hosts: one warning for the run, in --json and as a plain warning line', async () => {
    const cfg = await config('file');
    const { r, s } = await domuJson(['configs', '--json', '--config', cfg, '--out', join(dir, 'out-file'), '--cache-dir', join(dir, 'cache')]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.warnings.filter((w) => w.message.startsWith('store.disk'))).toEqual([{ stage: 'xen configs', message: expect.stringMatching(RISK) }]);
    expect(s.store).toEqual({ disk: 'file', path: '/scsistore' });

    const plain = await domu(['configs', '--config', cfg, '--out', join(dir, 'out-file'), '--cache-dir', join(dir, 'cache')]);
    expect(plain.exitCode, plain.stderr).toBe(0);
    // Plain output: the progress display shows the warning when it is said, the summary lists it
    // once among the warnings; neither repeats it per host or per file.
    const lines = plain.stdout.split('\n').filter((l) => l.includes('store.disk: file'));
    expect(lines).toHaveLength(2);
    expect(lines[0]).toMatch(/^› \[[\d:]+\] warning: store\.disk: file with 3 hosts: /);
    expect(lines[1]).toMatch(/^warning: xen configs: store\.disk: file with 3 hosts: /);
  });

  it('lun: no warning; every host names the LUN by path; targets.conf has both LUNs', async () => {
    const cfg = await config('lun', 'store:\n  disk: lun\n  disk_backing_store: /dev/vg0/busybox\n');
    const out = join(dir, 'out-lun');
    const { r, s } = await domuJson(['configs', '--json', '--config', cfg, '--out', out, '--cache-dir', join(dir, 'cache')]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(s.warnings.filter((w) => w.message.startsWith('store.disk'))).toEqual([]);
    expect(s.store).toEqual({ disk: 'lun', path: '/scsistore' });
    const path = '/dev/disk/by-path/ip-172.16.31.3:3260-iscsi-iqn.2015-02.com.stu31:t1-lun-2';
    for (const h of ['h1', 'h2', 'h3']) expect(await readFile(join(out, 'xen', h, 'busybox.cfg'), 'utf8')).toContain(`target=${path}' ]`);
    expect(await readFile(join(out, 'storage/targets.conf'), 'utf8')).toMatch(/^ {4}<backing-store \/dev\/sda3>\n {8}lun 1\n {4}<\/backing-store>\n {4}<backing-store \/dev\/vg0\/busybox>\n {8}lun 2\n/m);
  });
});

describe('--lun-device', () => {
  it('only with --publish, only with store.disk lun; a missing LUN stops the build at the store check, before any stage', async () => {
    const cfg = await config('flags');
    const store = join(dir, 'store');
    await mkdir(store, { recursive: true });
    const common = ['build', '--config', cfg, '--out', join(dir, 'out-build'), '--cache-dir', join(dir, 'cache')];

    const noPublish = await domu([...common, '--lun-device', '/dev/loop7']);
    expect(noPublish.exitCode).toBe(2);
    expect(noPublish.stderr).toContain('--lun-device only applies with --publish');

    const file = await domu([...common, '--publish', '--store', store, '--allow-unmounted', '--lun-device', '/dev/loop7']);
    expect(file.exitCode).toBe(2);
    expect(file.stderr).toContain('--lun-device /dev/loop7: only applies with store.disk: lun (store.disk is file)');

    const missing = join(dir, 'no-such-lun');
    const lun = await domuJson([...common, '--json', '--publish', '--store', store, '--allow-unmounted', '--set', 'store.disk=lun', '--lun-device', missing]);
    expect(lun.r.exitCode).toBe(2);
    expect(lun.s.error?.message).toBe(`the guest's LUN ${missing} does not exist: this Dom0 has not logged in to the iSCSI target iqn.2015-02.com.stu31:t1 on 172.16.31.3 (or udev names the LUN otherwise); nothing was written`);
    expect(lun.s.error?.hint).toContain('iscsiadm -m node -T iqn.2015-02.com.stu31:t1 -p 172.16.31.3 -l');
    expect(lun.s.stages.filter((x) => x.status !== 'skipped').map((x) => [x.name, x.status])).toEqual([['store', 'failed']]);
    expect(lun.r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });
});
