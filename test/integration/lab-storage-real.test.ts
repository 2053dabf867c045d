// The lab's storage server (src/lab/storage-server.ts) for real: the targets.conf domu generates for
// the default description (and, for two LUNs, for store.disk: lun), made the lab's (a sparse
// 64 MiB scratch file for /dev/sda3, ACL 127.0.0.1), served by a private tgtd on 127.0.0.1. Seen
// the way the lab's Dom0s will see it: libiscsi's iscsi-ls and iscsi-readcapacity16, and QEMU's
// own iSCSI client (qemu-block-extra) writing through `iscsi://127.0.0.1:<port>/<iqn>/1` into the
// backing file. Also: what it refuses and that stop() and an interrupted run leave no tgtd and no
// state directory.
import { readdirSync, readFileSync } from 'node:fs';
import { open, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AbortedError, DomuError } from '../../src/core/errors.js';
import { run } from '../../src/core/exec.js';
import { startStorageServer, type StorageServer } from '../../src/lab/storage-server.js';
import { LAB_MARK } from '../../src/lab/targets.js';
import { startTgtd } from '../../src/lab/tgtd.js';
import { loadDescription } from '../../src/model/description.js';
import { bootNames } from '../../src/pipeline/plan.js';
import { renderConfigs } from '../../src/stages/xenconfigs.js';
import { makeTestContext, type TestContext } from '../helpers/context.js';
import { iscsiCapacity, iscsiLs, iscsiLsShownSize, isRunning, refused, stopAllTgtd } from '../helpers/tgt.js';

const IQN = 'iqn.2015-02.com.stu31:t1'; // the default description's store.iqn
const SIZE = 64 * 1024 ** 2;
const MiB = 1024 ** 2;

let ctx: TestContext;
let generated: string;
/** The targets.conf of store.disk: lun: <backing-store> blocks, LUN 1 /dev/sda3, LUN 2 /dev/sda4. */
let generatedLun: string;
let server: StorageServer;

// QEMU's iSCSI client is a module of qemu-block-extra; without it QEMU cannot open iscsi:// at all.
const blockExtra = (await execa('dpkg', ['-s', 'qemu-block-extra'], { reject: false })).stdout.includes('Status: install ok installed');

/** The tgtd processes that are children of this test process (setpriv execs into tgtd). */
function ourTgtds(): number[] {
  return readdirSync('/proc')
    .filter((n) => /^\d+$/.test(n))
    .filter((n) => {
      try {
        const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
        const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        return stat.includes('(tgtd)') && Number(after[1]) === process.pid;
      } catch {
        return false;
      }
    })
    .map(Number);
}

beforeAll(async () => {
  ctx = await makeTestContext();
  const desc = loadDescription({});
  const targetsConf = (d: typeof desc) => renderConfigs(d, bootNames(d, '6.1.0-56-amd64')).files.find((f) => f.path === 'storage/targets.conf')!.content;
  generated = targetsConf(desc);
  generatedLun = targetsConf(loadDescription({ text: 'store:\n  disk: lun\n' }));
  server = await startStorageServer({ dir: join(ctx.root, 'lab'), targetsConf: generated, backingFiles: [{ path: 'store.img', size: SIZE }] }, ctx);
});

afterAll(async () => {
  await stopAllTgtd();
  await ctx?.dispose();
});

describe('the lab storage server on the generated targets.conf', () => {
  it('serves the target on 127.0.0.1 with LUN 1 = a sparse 64 MiB scratch file; the changes are said and marked', async () => {
    const store = join(ctx.root, 'lab', 'store.img');
    expect(server.iqn).toBe(IQN);
    expect(server.portal).toBe(`127.0.0.1:${server.port}`);
    expect(server.luns).toEqual([{ lun: 1, path: store, size: SIZE }]);
    expect(server.lunUrl(1)).toBe(`iscsi://127.0.0.1:${server.port}/${IQN}/1`);
    expect(() => server.lunUrl(2)).toThrow(/has no LUN 2/);
    const st = await stat(store);
    expect(st.size).toBe(SIZE);
    expect(st.blocks * 512).toBeLessThan(MiB); // sparse

    expect(server.changes).toEqual([
      `targets.conf: backing-store /dev/sda3 → ${store}: LUN 1's backing store on the storage server does not exist here; the lab uses a scratch file in its directory`,
      "targets.conf: initiator-address 172.16.31.0/24 → 127.0.0.1: the lab's Dom0s reach tgtd from 127.0.0.1 (QEMU's iSCSI client), not from the inventory's network",
    ]);
    const written = await readFile(server.targetsConfPath, 'utf8');
    expect(written).toContain(`    backing-store ${store}\n`);
    expect(written.split('\n').filter((l) => l.trimStart().startsWith(LAB_MARK))).toHaveLength(2);
    expect(written.split('\n').slice(0, 6)).toEqual(generated.split('\n').slice(0, 6));

    const [target] = await server.tgtd.targets();
    expect(target).toMatchObject({ iqn: IQN, acl: ['127.0.0.1'] });
    expect(target!.luns[1]).toMatchObject({ lun: 1, type: 'disk', backingStorePath: store, sizeMB: 67 });
  });

  it('iscsi-ls from 127.0.0.1 sees the target and LUN 1 with the file size', async () => {
    const found = await iscsiLs(server.portal);
    expect(found.targets.map((t) => t.iqn)).toEqual([IQN]);
    expect(found.targets[0]!.luns).toEqual([
      { lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' },
      { lun: 1, type: 'DIRECT_ACCESS', size: iscsiLsShownSize(SIZE), sizeText: '63M' },
    ]);
    expect(await iscsiCapacity(server.portal, IQN, 1)).toEqual({ blockSize: 512, bytes: SIZE });
  });

  // QEMU's own iSCSI client, as the lab's Dom0 VMs use it (-drive file=iscsi://…), with no guest:
  // `-machine none` and the monitor's qemu-io command (qemu-img/qemu-io of qemu-utils are not needed).
  it.skipIf(!blockExtra)(`${blockExtra ? '' : '(skipped: the Debian package qemu-block-extra is not installed) '}QEMU writes 1 MiB of 0x5a through iscsi://…/1 and reads it back; the bytes are in the backing file`, async () => {
    const monitor = ['qemu-io lun1 "write -P 0x5a 0 1M"', 'qemu-io lun1 "read -P 0x5a 0 1M"', 'info block', 'quit', ''].join('\n');
    const { stdout } = await run(
      ctx,
      'qemu-system-x86_64',
      ['-nodefaults', '-no-user-config', '-display', 'none', '-machine', 'none', '-monitor', 'stdio', '-drive', `file=${server.lunUrl(1)},if=none,id=lun1,format=raw,cache=none`],
      { input: monitor, timeoutMs: 60_000 },
    );
    expect(stdout).toContain('wrote 1048576/1048576 bytes at offset 0');
    expect(stdout).toContain('read 1048576/1048576 bytes at offset 0');
    expect(stdout).not.toMatch(/Pattern verification failed/);
    expect(stdout).toMatch(new RegExp(`"portal": "${server.portal.replace(/\./g, '\\.')}", "driver": "iscsi"`));

    const fh = await open(server.luns[0]!.path, 'r');
    try {
      const head = Buffer.alloc(MiB + 4096);
      await fh.read(head, 0, head.length, 0);
      expect(head.subarray(0, MiB).every((b) => b === 0x5a)).toBe(true);
      expect(head.subarray(MiB).every((b) => b === 0)).toBe(true);
    } finally {
      await fh.close();
    }
  });

  it('stop(): no tgtd left (/proc), the portal closed, the state directory gone; the lab files stay', async () => {
    const { pid } = server.tgtd;
    expect(ourTgtds()).toContain(pid);
    await server.stop();
    expect(isRunning(pid)).toBe(false);
    await expect(stat(`/proc/${pid}`)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(ourTgtds()).not.toContain(pid);
    expect(await refused(server.port)).toBe(true);
    await expect(stat(server.tgtd.stateDir)).rejects.toMatchObject({ code: 'ENOENT' });
    expect((await stat(server.luns[0]!.path)).size).toBe(SIZE);
    expect((await stat(server.targetsConfPath)).isFile()).toBe(true);
    expect(ctx.cleanup.labels.filter((l) => l.includes('tgtd'))).toEqual([]);
    await server.stop();
  });
});

describe('the lab storage server refuses and cleans up', () => {
  it('two LUNs (the generated file of store.disk: lun): LUN 1 and 2 as its blocks say, whatever the lab files\' names sort like', async () => {
    const guest = join(ctx.root, 'two', 'guest.img');
    await execa('mkdir', ['-p', join(ctx.root, 'two')]);
    await writeFile(guest, Buffer.alloc(2 * MiB, 0x11)); // given: used as it is
    // guest.img sorts before store.img: with plain backing-store lines tgt-admin would make it LUN 1, so those are refused.
    const plain = generated.replace(/^( *backing-store \/dev\/sda3)$/m, '$1\n    backing-store /dev/sda4');
    await expect(startStorageServer({ dir: join(ctx.root, 'two'), targetsConf: plain, backingFiles: [{ path: 'store.img', size: SIZE }, { path: guest }] }, ctx)).rejects.toThrow(/LUN numbers would differ/);
    const s = await startStorageServer({ dir: join(ctx.root, 'two'), targetsConf: generatedLun, backingFiles: [{ path: 'store.img', size: SIZE }, { path: guest }] }, ctx);
    try {
      expect(s.luns).toEqual([
        { lun: 1, path: join(ctx.root, 'two', 'store.img'), size: SIZE },
        { lun: 2, path: guest, size: 2 * MiB },
      ]);
      expect(await readFile(s.targetsConfPath, 'utf8')).toContain(`    <backing-store ${guest}>\n        lun 2\n    </backing-store>\n`);
      expect(s.lunUrl(2)).toBe(`iscsi://${s.portal}/${IQN}/2`);
      expect(s.changes.map((c) => c.split(':')[1]!.trim())).toEqual([`backing-store /dev/sda3 → ${s.luns[0]!.path}`, `backing-store /dev/sda4 → ${guest}`, 'initiator-address 172.16.31.0/24 → 127.0.0.1']);
      expect(await iscsiCapacity(s.portal, IQN, 1)).toEqual({ blockSize: 512, bytes: SIZE });
      expect(await iscsiCapacity(s.portal, IQN, 2)).toEqual({ blockSize: 512, bytes: 2 * MiB });
      expect((await iscsiLs(s.portal)).targets[0]!.luns.map((l) => l.lun)).toEqual([0, 1, 2]);
    } finally {
      await s.stop();
    }
  });

  it('an interrupted run (the cleanup registry undone, as on SIGINT) kills tgtd and removes its state directory (one given here)', async () => {
    const stateDir = join(ctx.root, 'tgtd-state');
    const s = await startStorageServer({ dir: join(ctx.root, 'interrupted'), targetsConf: generated, backingFiles: [{ path: 'store.img', size: SIZE }], tgtd: { stateDir } }, ctx);
    expect(s.tgtd.stateDir).toBe(stateDir);
    expect((await stat(join(stateDir, `socket.${s.tgtd.controlPort}`))).isSocket()).toBe(true);
    expect(ctx.cleanup.labels).toEqual([`kill tgtd (pid ${s.tgtd.pid}), remove ${s.tgtd.stateDir}`]);
    expect(await ctx.cleanup.runAll(ctx.log)).toEqual([]);
    expect(isRunning(s.tgtd.pid)).toBe(false);
    await expect(stat(s.tgtd.stateDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('an aborted run (Run.abort on SIGINT aborts the signal, then undoes the registry): tgtd is SIGKILLed at once', async () => {
    const run = await makeTestContext();
    try {
      const t = await startTgtd(run);
      run.controller.abort(new AbortedError('SIGINT'));
      for (let i = 0; i < 100 && isRunning(t.pid); i++) await new Promise((r) => setTimeout(r, 20));
      expect(isRunning(t.pid)).toBe(false); // execa's cancel, with SIGKILL: tgtd ignores SIGTERM
      expect(await run.cleanup.runAll(run.log)).toEqual([]);
      await expect(stat(t.stateDir)).rejects.toMatchObject({ code: 'ENOENT' });
    } finally {
      await run.dispose();
    }
  });

  it('a LUN tgt-admin skips with exit 0 is caught by the check; no tgtd stays, the files it made are removed', async () => {
    const dir = join(ctx.root, 'skipped');
    const before = ourTgtds();
    // The same file for both LUNs: tgt-admin would merge them silently; refused before anything is made.
    const twice = startStorageServer({ dir, targetsConf: generatedLun, backingFiles: [{ path: 'same.img', size: SIZE }, { path: 'same.img' }] }, ctx);
    await expect(twice).rejects.toBeInstanceOf(DomuError);
    await expect(twice).rejects.toThrow(/^the lab names the backing store .*\/same\.img twice: tgt-admin merges equal backing-store paths into one LUN$/);
    await expect(stat(join(dir, 'same.img'))).rejects.toMatchObject({ code: 'ENOENT' });

    // A backing file some process holds open: tgt-admin (lsof) skips it as in use, says so, exits 0.
    await execa('mkdir', ['-p', dir]);
    const held = join(dir, 'held.img');
    await writeFile(held, Buffer.alloc(MiB));
    const fh = await open(held, 'r');
    try {
      const skipped = startStorageServer({ dir, targetsConf: generatedLun, backingFiles: [{ path: 'new.img', size: SIZE }, { path: held }] }, ctx);
      await expect(skipped).rejects.toThrow(/ has LUN 1, expected LUN 1, 2; tgt-admin said: Device .*held\.img is used .*Skipping device .*held\.img - it is in use/);
    } finally {
      await fh.close();
    }
    await expect(stat(join(dir, 'new.img'))).rejects.toMatchObject({ code: 'ENOENT' }); // made by it, so removed
    expect((await stat(held)).size).toBe(MiB); // given, so not removed
    expect(ourTgtds()).toEqual(before);
    expect(ctx.cleanup.size).toBe(0);
  });

  it('a given backing file of another size, and a count that does not match the file, start no tgtd', async () => {
    const dir = join(ctx.root, 'given');
    await execa('mkdir', ['-p', dir]);
    await writeFile(join(dir, 'given.img'), Buffer.alloc(4096));
    const before = ourTgtds();
    await expect(startStorageServer({ dir, targetsConf: generated, backingFiles: [{ path: 'given.img', size: SIZE }] }, ctx)).rejects.toThrow(/given\.img has 4096 bytes, not the 67108864 asked for/);
    await expect(startStorageServer({ dir, targetsConf: generated, backingFiles: [] }, ctx)).rejects.toThrow(/1 backing-store line but the lab was given 0/);
    expect(ourTgtds()).toEqual(before);
    expect((await stat(join(dir, 'given.img'))).size).toBe(4096); // the caller's file is left alone
    await rm(dir, { recursive: true, force: true });
  });

  it('a state directory too long for tgtd\'s socket path is refused before tgtd starts', async () => {
    const stateDir = join(ctx.root, 'x'.repeat(120 - ctx.root.length));
    const before = ourTgtds();
    await expect(startTgtd(ctx, { stateDir })).rejects.toThrow(/too long for a socket path \(at most 107 bytes/);
    expect(ourTgtds()).toEqual(before);
    await expect(stat(stateDir)).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
