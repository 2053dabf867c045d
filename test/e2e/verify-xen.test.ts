// `domu verify` on Debian's real Xen nested in QEMU (TCG), through the CLI as an administrator runs
// it, on builds of the default guest from the shared test cache. The PVH default with its live
// migration is proved by the fault suite's Xen file (test/faults/interrupt-xen.test.ts), whose
// last run must pass every check after the interrupted ones, and by test/e2e/full.test.ts on a
// cold cache. Here: a PV guest (no live migration on this hypervisor: save and restore instead),
// a guest that cannot mount its root, a store path dom0 cannot take (exit 2 at once), and a
// time-out that names its phase. --out is never changed and no QEMU is left behind.
import { mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { which } from '../../src/core/exec.js';
import { TEST_CACHE_DIR } from '../helpers/busybox-tarball.js';
import type { BuildRecord } from '../../src/model/buildrecord.js';
import { domu, domuJson, stage } from '../helpers/cli.js';
import { tempDir } from '../helpers/context.js';
import { qemusFor } from '../helpers/qemu-processes.js';
import { buildXenGuest, identities, XEN_TEST_TIMEOUT, type Check } from '../helpers/xen-guest.js';

const missing = (await which('qemu-system-x86_64')) ? undefined : 'qemu-system-x86_64 not found on PATH (apt-get install qemu-system-x86; scripts/setup.sh does it)';
if (missing) console.warn(`verify-xen: SKIPPING: ${missing}`);

let dir: string;

beforeAll(async () => {
  dir = await tempDir('domu-verify-xen-');
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

const verify = (out: string, extra: string[] = XEN_TEST_TIMEOUT) => domuJson(['verify', '--json', '--out', out, '--cache-dir', TEST_CACHE_DIR, ...extra]);

describe.skipIf(missing)('domu verify on real Xen', () => {
  it(
    'xen.type pv: boots, network up, every check passes; moved as the hypervisor allows (Debian\'s Xen: live migration reported impossible, save and restore checked)',
    async () => {
      const out = await buildXenGuest(dir, 'out-pv', ['xen.type=pv']);
      const before = await identities(out);
      const { r, s } = await verify(out);
      expect(r.exitCode, r.stderr).toBe(0);
      const checks = (['guest', 'checks', 'move', 'disk'] as const).flatMap((n) => (stage(s, n).outputs as { checks: Check[] }).checks);
      expect(checks.filter((c) => !c.ok)).toEqual([]);
      // What the downloaded hypervisor can do decides the move: Debian's Xen is built without
      // shadow paging (virt_caps has hap, no shadow), so a PV guest is saved and restored there.
      const caps = String((stage(s, 'dom0').outputs as { virtCaps: string }).virtCaps).split(/\s+/);
      expect(caps).toContain('hap');
      const live = caps.includes('shadow');
      expect(checks.map((c) => c.name)).toEqual([
        'xl create',
        'ready marker',
        'console shell',
        'applets',
        'kernel release',
        'root file system',
        'modules loaded',
        'address',
        'ping dom0 → guest',
        'ping guest → dom0',
        'file written',
        live ? 'live migration' : 'save and restore',
        'console shell after the move',
        'same guest after the move',
        'file after the move',
        'ping dom0 → guest after the move',
        'ping guest → dom0 after the move',
        'file on the guest disk',
      ]);
      const move = stage(s, 'move');
      expect((move.outputs as { kind: string }).kind).toBe(live ? 'migrate' : 'save-restore');
      if (!live) {
        expect(r.stderr).toMatch(/live migration not tried: a PV guest cannot live-migrate on this hypervisor: it has no shadow paging/);
        expect((move.outputs as { liveMigration: string }).liveMigration).toMatch(/no shadow paging/);
      }
      expect(checks.find((c) => c.name === 'modules loaded')!.detail).toMatch(/xen_netfront loaded/);
      expect(await identities(out)).toEqual(before);
      expect(await qemusFor(dirname(s.log))).toEqual([]);
    },
    900_000,
  );

  it(
    'kernel.ramdisk none: the guest kernel cannot mount its root; exit 1, the check named, the console tail names the root device',
    async () => {
      const out = await buildXenGuest(dir, 'out-noramdisk', ['kernel.ramdisk=none']);
      const { r, s } = await verify(out);
      expect(r.exitCode, r.stderr).toBe(1);
      expect(s.error?.message).toMatch(/^the guest did not boot: .*the guest kernel panicked/);
      expect(r.stderr).toMatch(/the last 30 lines of the guest console:\n[\s\S]*VFS: (Cannot open|Unable to mount) root[^\n]*xvda|unknown-block/);
      expect(r.stderr).toMatch(/the last 30 lines of xl dmesg:/);
      expect(r.stderr).not.toMatch(/^\s+at /m);
      expect(await qemusFor(dirname(s.log))).toEqual([]);
    },
    600_000,
  );

  it('a store path dom0 cannot take as a parameter (a space in it): exit 2 before anything runs', async () => {
    // The PV build's files, linked, with a build.json whose description has such a store path.
    const src = join(dir, 'out-pv');
    const out = join(dir, 'out-space');
    await mkdir(out);
    for (const n of await readdir(src)) if (n !== 'build.json') await symlink(join(src, n), join(out, n));
    const record = JSON.parse(await readFile(join(src, 'build.json'), 'utf8')) as BuildRecord;
    record.description.store.path = '/my store';
    await writeFile(join(out, 'build.json'), JSON.stringify(record));
    const r = await domu(['verify', '--out', out, '--cache-dir', TEST_CACHE_DIR]);
    expect(r.exitCode, r.stderr).toBe(2);
    expect(r.stderr).toMatch(/^domu verify: error: domu verify on Xen cannot pass this build to its dom0: dom0 parameter store_path "\/my store" is not an absolute path/m);
    expect(r.stderr).not.toMatch(/^\s+at /m);
  });

  it('--timeout 3: exit 1 naming what it waited for (dom0), no QEMU left', async () => {
    const out = join(dir, 'out-pv');
    const { r, s } = await verify(out, ['--timeout', '3']);
    expect(r.exitCode, r.stderr).toBe(1);
    expect(s.error?.message).toMatch(/^the nested Xen host did not come up: timed out after 3\.0 s waiting for dom0's ready marker domu-dom0-ready/);
    expect(await qemusFor(dirname(s.log))).toEqual([]);
  }, 120_000);
});
