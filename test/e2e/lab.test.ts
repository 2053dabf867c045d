// `domu lab` through the CLI, as an administrator rehearses the reference lab: a real tgtd on
// 127.0.0.1 serving the generated storage/targets.conf, two nested Xen Dom0s (Debian's Xen under
// QEMU, TCG) joined by a private segment, the guest created on test1 from its generated config.
//   store.disk lun   live-migrated to test2 with `xl migrate busybox 172.16.31.2` (over ssh between
//                    the dom0s) and back; every check passes; the guest's LUN is a clean ext4
//                    holding the last file the guest wrote
//   store.disk file  (the default) boots on each host in turn, the file from test1 read on test2
// Both leave --out untouched and no QEMU or tgtd behind. Bad input is exit 2 before anything runs.
import { readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { which } from '../../src/core/exec.js';
import { portHeld } from '../../src/lab/segment.js';
import { getBusyboxTarball, TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import { getKernelPackage } from '../helpers/kernel-package.js';
import { domu, domuJson, stage } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { qemusFor } from '../helpers/qemu-processes.js';
import { buildXenGuest, identities, type Check } from '../helpers/xen-guest.js';

const needs = [['qemu-system-x86_64', 'qemu-system-x86'], ['tgtd', 'tgt']] as const;
const missingTools: string[] = [];
for (const [tool, pkg] of needs) if (!(await which(tool))) missingTools.push(`${tool} (Debian package ${pkg})`);
const missing = missingTools.length ? `not found: ${missingTools.join(', ')}; scripts/setup.sh installs them` : undefined;
if (missing) console.warn(`lab: SKIPPING: ${missing}`);

let dir: string;
beforeAll(async () => {
  dir = await tempDir('domu-lab-');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const LAB_TIMEOUT = ['--timeout', '400'];
const lab = (out: string) => domuJson(['lab', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR, ...LAB_TIMEOUT]);

/** tgtd processes serving `portal` (their command line names it: `--iscsi portal=127.0.0.1:<port>`). */
async function tgtdsServing(portal: string): Promise<number[]> {
  const found: number[] = [];
  for (const pid of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
    const comm = await readFile(`/proc/${pid}/comm`, 'utf8').catch(() => '');
    if (comm.trim() !== 'tgtd') continue;
    const cmdline = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0');
    if (cmdline.includes(`portal=${portal}`)) found.push(Number(pid));
  }
  return found;
}

const allChecks = (s: Parameters<typeof stage>[0], names: readonly string[]) => names.flatMap((n) => ((stage(s, n).outputs as { checks?: Check[] }).checks ?? []));

describe.skipIf(missing)('domu lab', () => {
  it(
    'store.disk lun: the guest created on test1, live-migrated to test2 and back over ssh; every check passes; its LUN is clean and holds its last file',
    async () => {
      const out = await buildXenGuest(dir, 'out-lun', ['store.disk=lun']);
      const before = await identities(out);
      const { r, s } = await lab(out);
      expect(r.exitCode, r.stderr).toBe(0);
      const checks = allChecks(s, ['test2', 'create', 'migrate', 'migrate back', 'disk']);
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      const names = checks.map((c) => c.name);
      for (const n of [
        'ping test1 → test2',
        'ssh test1 → test2',
        'xl create',
        'ready marker',
        'address',
        'ping test2 → guest, across the segment (guest on test1)',
        'file written',
        'xl migrate test1 → test2',
        'runs on test2',
        'gone from test1',
        'same guest on test2',
        'file on test2',
        'address on test2',
        'file written on test2',
        'ping test1 → guest, across the segment (guest on test2)',
        'ping guest → test1 (guest on test2)',
        'xl migrate test2 → test1',
        'runs on test1',
        'gone from test2',
        'same guest on test1',
        'file on test1',
        'guest disk clean',
        'last file on the guest disk',
      ]) {
        expect(names, n).toContain(n);
      }
      // The storage server served the generated file, changed only where the lab must (said why).
      const storage = stage(s, 'storage').outputs as { luns: { lun: number; size: number }[]; changes: string[]; targetsConf: string };
      expect(storage.luns.map((l) => l.lun)).toEqual([1, 2]);
      // LUN 2 holds the image published onto it: exactly the image's size, as the build made it.
      expect(storage.luns[1]!.size).toBe((await stat(join(out, 'busybox.img'))).size);
      expect(storage.changes.join('\n')).toMatch(/initiator-address 172\.16\.31\.0\/24 → 127\.0\.0\.1/);
      expect(r.stderr).toMatch(/lab: targets\.conf: initiator-address/);
      // The migration ran as MIGRATION.md says, to test2's inventory address, and the guest paused.
      const m = stage(s, 'migrate').outputs as { from: string; to: string; seconds: number; pauseSeconds: number };
      expect([m.from, m.to]).toEqual(['test1', 'test2']);
      expect(m.pauseSeconds).toBeGreaterThan(0);
      expect(m.pauseSeconds).toBeLessThan(m.seconds);
      const back = stage(s, 'migrate back').outputs as { from: string; to: string };
      expect([back.from, back.to]).toEqual(['test2', 'test1']);
      expect(checks.find((c) => c.name === 'xl migrate test1 → test2')!.detail).toMatch(/Migration successful/);
      expect(checks.find((c) => c.name === 'address')!.detail).toMatch(/172\.16\.31\.4\/16/);
      expect(checks.find((c) => c.name === 'address on test2')!.detail).toMatch(/^eth0: 172\.16\.31\.4\/16 /);
      expect(await identities(out)).toEqual(before);
      expect(await qemusFor(out)).toEqual([]);
      // The run's tgtd is gone and nothing holds its portal.
      const portal = (stage(s, 'storage').outputs as { portal: string }).portal;
      expect(await tgtdsServing(portal)).toEqual([]);
      expect(portHeld(await readFile('/proc/net/tcp', 'utf8'), Number(portal.split(':')[1]))).toBe(false);
    },
    1_800_000,
  );

  it(
    'store.disk file (the default): boots on test1, then on test2 with the store handed over (no migration: said why); the file written on test1 is read on test2',
    async () => {
      const out = await buildXenGuest(dir, 'out-file');
      const { r, s } = await lab(out);
      expect(r.exitCode, r.stderr).toBe(0);
      const checks = allChecks(s, ['test2', 'create', 'test2 in turn', 'disk']);
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      const names = checks.map((c) => c.name);
      for (const n of ['file written', 'powered off on test1', 'file on test2, written on test1', 'file written on test2', 'store file system', 'guest disk clean', 'last file on the guest disk']) expect(names, n).toContain(n);
      expect(s.stages.map((x: { name: string }) => x.name)).not.toContain('migrate');
      expect(r.stderr).toMatch(/store\.disk is file: the guest is not migrated/);
      expect(await qemusFor(out)).toEqual([]);
    },
    1_800_000,
  );

  it('refuses, exit 2 before anything runs: one host; a PV guest with store.disk lun; no build', async () => {
    const [kernel, tarball] = await Promise.all([getKernelPackage(), getBusyboxTarball()]);
    const one = join(dir, 'one-host.yaml');
    await writeFile(one, `busybox:\n  version: 1.35.0\nkernel:\n  image: ${kernel.image}\nhosts:\n  - name: test1\n    address: 172.16.31.1\n    bridge: xenbr0\n    nic: eth0\n`);
    const out1 = join(dir, 'out-one');
    const b = await domu(['build', '--config', one, '--cache-dir', TEST_CACHE_DIR, '--source', tarball, '--jobs', '2', '--out', out1]);
    expect(b.exitCode, b.stderr).toBe(0);
    const r = await domu(['lab', '--out', out1, '--cache-dir', TEST_CACHE_DIR]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/the lab needs two Dom0s/);
    const pv = await domu(['lab', '--out', await buildXenGuest(dir, 'out-pv-lun', ['store.disk=lun', 'xen.type=pv']), '--cache-dir', TEST_CACHE_DIR]);
    expect(pv.exitCode).toBe(2);
    expect(pv.stderr).toMatch(/a PV guest cannot live-migrate on Debian's Xen/);
    const none = await domu(['lab', '--out', join(dir, 'no-such-out'), '--cache-dir', TEST_CACHE_DIR]);
    expect(none.exitCode).toBe(2);
    for (const x of [r, pv, none]) {
      expect(x.stderr.trim().split('\n').filter((l) => /error/.test(l))).toHaveLength(1);
      expect(x.stderr).not.toMatch(/\n\s+at /);
    }
    expect(await qemusFor(dir)).toEqual([]);
  }, 600_000);
});
