// targets.conf against a real iSCSI target: Debian's tgtd (private, on 127.0.0.1 and its own port
// and control socket, see test/helpers/tgt.ts) loads a file in the reference lab's form with
// tgt-admin, and the userspace initiator of libiscsi (iscsi-ls, iscsi-readcapacity16) looks at it
// the way a Dom0 would: discovery, login, LUNs and their sizes. The backing store is a sparse
// 5 GiB file instead of /dev/sda3. Also: what initiator-address does (ACL: an initiator outside
// it does not see the target in discovery and cannot log in), what tgt-admin rejects and what it
// silently accepts, and that no tgtd outlives its test process.
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ExecError } from '../../src/core/exec.js';
import { projectPath } from '../../src/core/paths.js';
import { tempDir } from '../helpers/context.js';
import { loadDescription } from '../../src/model/description.js';
import { bootNames } from '../../src/pipeline/plan.js';
import { renderConfigs } from '../../src/stages/xenconfigs.js';
import { GUEST_LUN, STORE_LUN } from '../../src/xen/lun.js';
import { iscsiCapacity, iscsiLs, iscsiLsShownSize, isRunning, parseIscsiLs, refused, startTgtd, stopAllTgtd, type Tgtd } from '../helpers/tgt.js';

const IQN = 'iqn.2015-02.com.stu31:t1';
const IQN2 = 'iqn.2015-02.com.stu31:t2';
const LAB_SIZE = 5 * 1024 ** 3; // the lab's 5 GiB /dev/sda3, as a sparse file
const SMALL_SIZE = 96 * 1024 ** 2 + 512; // not a round number: sizes must come from the file
const GUEST_SIZE = 32 * 1024 ** 2; // unlike SMALL_SIZE, so that swapped LUNs show

let dir: string;
let lab: string;
let small: string;
let tgtd: Tgtd;

async function sparse(path: string, size: number): Promise<string> {
  const fh = await open(path, 'w');
  await fh.truncate(size);
  await fh.close();
  return path;
}

/** A targets.conf in the lab's form: one <target> block per entry. */
async function targetsConf(name: string, targets: { iqn: string; store: string; initiators?: string }[]): Promise<string> {
  const text = targets
    .map((t) => [`<target ${t.iqn}>`, `    backing-store ${t.store}`, ...(t.initiators ? [`    initiator-address ${t.initiators}`] : []), '</target>'].join('\n'))
    .join('\n');
  const path = join(dir, name);
  await writeFile(path, `${text}\n`);
  return path;
}

function luns(found: Awaited<ReturnType<typeof iscsiLs>>, iqn: string) {
  return found.targets.find((t) => t.iqn === iqn)?.luns;
}

beforeAll(async () => {
  dir = await tempDir('domu-tgt-');
  lab = await sparse(join(dir, 'sda3.img'), LAB_SIZE);
  small = await sparse(join(dir, 'small.img'), SMALL_SIZE);
  tgtd = await startTgtd();
});

// stop() for the shared tgtd and any a failed test left running; the helper's process exit hook
// and setpriv --pdeathsig cover a worker that dies before this runs.
afterAll(async () => {
  await stopAllTgtd();
  if (dir) await execa('rm', ['-rf', dir]);
});

describe('a private tgtd', () => {
  it('listens only on its own 127.0.0.1 portal, with its socket in its own directory', async () => {
    expect(tgtd.port).not.toBe(3260);
    expect(tgtd.portal).toBe(`127.0.0.1:${tgtd.port}`);
    expect(await tgtd.portals()).toEqual([`${tgtd.portal},1`]);
    expect((await stat(join(tgtd.stateDir, `socket.${tgtd.controlPort}`))).isSocket()).toBe(true);
    expect(isRunning(tgtd.pid)).toBe(true);
    expect((await readFile(`/proc/${tgtd.pid}/comm`, 'utf8')).trim()).toBe('tgtd');
  });
});

describe('targets.conf in the reference lab form', () => {
  it('a file-backed LUN, initiator-address 127.0.0.1: iscsi-ls sees the target and LUN 1 with the file size', async () => {
    const conf = await targetsConf('lab-local.conf', [{ iqn: IQN, store: lab, initiators: '127.0.0.1' }]);
    const applied = await tgtd.loadConfig(conf);
    expect(applied.stdout).toContain(`--op new --mode target --tid 1 -T ${IQN}`);
    expect(applied.stdout).toContain(`-I 127.0.0.1`);

    const shown = await tgtd.show();
    expect(shown).toContain(`Target 1: ${IQN}`);
    expect(shown).toContain(`Backing store path: ${lab}`);
    expect(shown).toMatch(/ACL information:\n\s+127\.0\.0\.1$/m);

    const found = await iscsiLs(tgtd.portal);
    expect(found.targets.map((t) => t.iqn)).toEqual([IQN]);
    expect(found.targets[0]?.portals).toEqual([`${tgtd.portal},1`]);
    expect(luns(found, IQN)).toEqual([
      { lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' },
      { lun: 1, type: 'DIRECT_ACCESS', size: iscsiLsShownSize(LAB_SIZE), sizeText: '4G' },
    ]);
    expect(await iscsiCapacity(tgtd.portal, IQN, 1)).toEqual({ blockSize: 512, bytes: LAB_SIZE });
  });

  it('initiator-address 172.16.31.0/24 (the lab verbatim): 127.0.0.1 neither discovers the target nor logs in', async () => {
    const conf = await targetsConf('lab.conf', [{ iqn: IQN, store: lab, initiators: '172.16.31.0/24' }]);
    await tgtd.loadConfig(conf);
    const shown = await tgtd.show();
    expect(shown).toContain(`Target 1: ${IQN}`);
    expect(shown).toMatch(/ACL information:\n\s+172\.16\.31\.0\/24$/m);

    expect((await iscsiLs(tgtd.portal)).targets).toEqual([]);
    const login = iscsiCapacity(tgtd.portal, IQN, 1);
    await expect(login).rejects.toBeInstanceOf(ExecError);
    await expect(login).rejects.toMatchObject({ status: 10, stderr: expect.stringContaining('Target not found') });
  });

  it('two targets in one file: both seen, each with its own LUN and size; the ACL applies per target', async () => {
    const both = await targetsConf('two.conf', [
      { iqn: IQN, store: lab, initiators: '127.0.0.1' },
      { iqn: IQN2, store: small, initiators: '127.0.0.0/8' },
    ]);
    await tgtd.loadConfig(both);
    const found = await iscsiLs(tgtd.portal);
    expect(found.targets.map((t) => t.iqn).sort()).toEqual([IQN, IQN2]);
    expect(luns(found, IQN)?.find((l) => l.lun === 1)?.size).toBe(iscsiLsShownSize(LAB_SIZE));
    expect(luns(found, IQN2)?.find((l) => l.lun === 1)?.size).toBe(iscsiLsShownSize(SMALL_SIZE));
    expect(await iscsiCapacity(tgtd.portal, IQN2, 1)).toEqual({ blockSize: 512, bytes: SMALL_SIZE });

    const oneExcluded = await targetsConf('two-one-excluded.conf', [
      { iqn: IQN, store: lab, initiators: '172.16.31.0/24' },
      { iqn: IQN2, store: small, initiators: '127.0.0.0/8' },
    ]);
    await tgtd.loadConfig(oneExcluded);
    expect((await iscsiLs(tgtd.portal)).targets.map((t) => t.iqn)).toEqual([IQN2]);
  });

  it('--update ALL makes the targets match the file; -e only adds and keeps an existing target as it was', async () => {
    await tgtd.loadConfig(await targetsConf('open.conf', [{ iqn: IQN, store: lab, initiators: '127.0.0.1' }]));
    const closed = await targetsConf('closed.conf', [{ iqn: IQN, store: lab, initiators: '172.16.31.0/24' }]);

    const executed = await tgtd.loadConfig(closed, { mode: 'execute' });
    expect(executed.stdout).toContain(`Target ${IQN} already exists!`);
    expect(await tgtd.show()).toMatch(/ACL information:\n\s+127\.0\.0\.1$/m);
    expect((await iscsiLs(tgtd.portal)).targets.map((t) => t.iqn)).toEqual([IQN]);

    await tgtd.loadConfig(closed);
    expect(await tgtd.show()).toMatch(/ACL information:\n\s+172\.16\.31\.0\/24$/m);
    expect((await iscsiLs(tgtd.portal)).targets).toEqual([]);

    await tgtd.loadConfig(await targetsConf('other.conf', [{ iqn: IQN2, store: small }]));
    const shown = await tgtd.show();
    expect(shown).not.toContain(IQN);
    expect(shown).toContain(IQN2);
  });

  it('no initiator-address: tgt-admin binds ALL, anyone may log in', async () => {
    await tgtd.loadConfig(await targetsConf('no-acl.conf', [{ iqn: IQN, store: small }]));
    expect(await tgtd.show()).toMatch(/ACL information:\n\s+ALL$/m);
    expect(luns(await iscsiLs(tgtd.portal), IQN)?.map((l) => l.lun)).toEqual([0, 1]);
  });

  it('a syntax error (no </target>): tgt-admin exits non-zero with a message and changes nothing', async () => {
    await tgtd.loadConfig(await targetsConf('good.conf', [{ iqn: IQN, store: small, initiators: '127.0.0.1' }]));
    const before = await tgtd.show();
    const bad = join(dir, 'unclosed.conf');
    await writeFile(bad, `<target ${IQN2}>\n    backing-store ${lab}\n    initiator-address 127.0.0.1\n`);
    for (const mode of ['update', 'execute'] as const) {
      const failed = tgtd.loadConfig(bad, { mode });
      await expect(failed).rejects.toBeInstanceOf(ExecError);
      const err = (await failed.catch((e: unknown) => e)) as ExecError;
      expect(err.status).not.toBe(0);
      expect(err.stderr).toMatch(/Block "<target>" has no EndBlock statement/);
    }
    expect(await tgtd.show()).toBe(before);
  });

  it('a close tag without an open one is rejected too', async () => {
    const bad = join(dir, 'stray.conf');
    await writeFile(bad, `    backing-store ${lab}\n</target>\n`);
    await expect(tgtd.loadConfig(bad)).rejects.toMatchObject({ status: 255, stderr: expect.stringMatching(/EndBlock "<\/target>" has no StartBlock/) });
  });

  it('the generated targets.conf of store.disk lun: LUN 1 the store, LUN 2 the guest disk, each with its size', async () => {
    // The rendered file as the storage server gets it, its backing stores (/dev/sda3, /dev/sda4)
    // and initiator subnet replaced by scratch files and 127.0.0.1: nothing else changed.
    const desc = loadDescription({ text: 'store:\n  disk: lun\n' });
    const rendered = renderConfigs(desc, bootNames(desc, '6.1.0-56-amd64')).files.find((f) => f.path === 'storage/targets.conf')!.content;
    expect(rendered.match(/^ {4}<backing-store .*$/gm)).toEqual(['    <backing-store /dev/sda3>', '    <backing-store /dev/sda4>']);
    const conf = join(dir, 'generated-lun.conf');
    await writeFile(conf, rendered.replace(' /dev/sda3>\n', ` ${lab}>\n`).replace(' /dev/sda4>\n', ` ${small}>\n`).replace(`initiator-address ${desc.store.initiators}`, 'initiator-address 127.0.0.1'));
    await tgtd.loadConfig(conf);
    expect(luns(await iscsiLs(tgtd.portal), IQN)).toEqual([
      { lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' },
      { lun: 1, type: 'DIRECT_ACCESS', size: iscsiLsShownSize(LAB_SIZE), sizeText: '4G' },
      { lun: GUEST_LUN, type: 'DIRECT_ACCESS', size: iscsiLsShownSize(SMALL_SIZE), sizeText: '96M' },
    ]);
    expect(await iscsiCapacity(tgtd.portal, IQN, 1)).toEqual({ blockSize: 512, bytes: LAB_SIZE });
    expect(await iscsiCapacity(tgtd.portal, IQN, GUEST_LUN)).toEqual({ blockSize: 512, bytes: SMALL_SIZE });
  });

  it('store.disk lun with paths that sort the other way round (z-store.img, a-guest.img): still LUN 1 the store, LUN 2 the guest disk', async () => {
    // tgt-admin numbers plain backing-store lines by sorted path: a-guest.img would be LUN 1. The
    // file is the generated one byte for byte, its paths and initiator subnet set in the description.
    const store = await sparse(join(dir, 'z-store.img'), SMALL_SIZE);
    const guest = await sparse(join(dir, 'a-guest.img'), GUEST_SIZE);
    const desc = loadDescription({ text: `store:\n  disk: lun\n  backing_store: ${store}\n  disk_backing_store: ${guest}\n  initiators: 127.0.0.0/8\n` });
    const rendered = renderConfigs(desc, bootNames(desc, '6.1.0-56-amd64')).files.find((f) => f.path === 'storage/targets.conf')!.content;
    const conf = join(dir, 'generated-lun-sorted.conf');
    await writeFile(conf, rendered);
    await tgtd.loadConfig(conf);
    expect(luns(await iscsiLs(tgtd.portal), IQN)).toEqual([
      { lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' },
      { lun: STORE_LUN, type: 'DIRECT_ACCESS', size: iscsiLsShownSize(SMALL_SIZE), sizeText: '96M' },
      { lun: GUEST_LUN, type: 'DIRECT_ACCESS', size: iscsiLsShownSize(GUEST_SIZE), sizeText: '31M' },
    ]);
    expect(await iscsiCapacity(tgtd.portal, IQN, STORE_LUN)).toEqual({ blockSize: 512, bytes: SMALL_SIZE });
    expect(await iscsiCapacity(tgtd.portal, IQN, GUEST_LUN)).toEqual({ blockSize: 512, bytes: GUEST_SIZE });
    const shown = (await tgtd.targets()).find((t) => t.iqn === IQN)!.luns.filter((l) => l.lun !== 0);
    expect(shown.map((l) => [l.lun, l.backingStorePath])).toEqual([[STORE_LUN, store], [GUEST_LUN, guest]]);
  });

  it('a backing-store that does not exist is NOT an error: exit 0, the target has no LUN 1', async () => {
    const missing = join(dir, 'no-such-disk.img');
    const applied = await tgtd.loadConfig(await targetsConf('missing.conf', [{ iqn: IQN, store: missing, initiators: '127.0.0.1' }]));
    expect(applied.exitCode).toBe(0);
    expect(applied.stdout).toContain(`# Skipping device: ${missing}`);
    expect(luns(await iscsiLs(tgtd.portal), IQN)?.map((l) => l.lun)).toEqual([0]);
  });
});

describe('iscsi-ls output parsing', () => {
  it('reads targets, portals, LUN types and sizes with their units', () => {
    const out = [
      `Target:${IQN2} Portal:127.0.0.1:3261,1`,
      'Lun:0    Type:STORAGE_ARRAY_CONTROLLER',
      'Lun:1    Type:DIRECT_ACCESS (Size:95M)',
      `Target:${IQN} Portal:127.0.0.1:3261,1`,
      'Lun:0    Type:STORAGE_ARRAY_CONTROLLER',
      'Lun:1    Type:DIRECT_ACCESS (Size:4G)',
      'Lun:2    Type:DIRECT_ACCESS (Size:511 )',
      'Lun:3    Type:MMC (No media loaded)',
    ].join('\n');
    expect(parseIscsiLs(out)).toEqual({
      targets: [
        { iqn: IQN2, portals: ['127.0.0.1:3261,1'], luns: [{ lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' }, { lun: 1, type: 'DIRECT_ACCESS', size: 95 * 1024 ** 2, sizeText: '95M' }] },
        {
          iqn: IQN,
          portals: ['127.0.0.1:3261,1'],
          luns: [
            { lun: 0, type: 'STORAGE_ARRAY_CONTROLLER' },
            { lun: 1, type: 'DIRECT_ACCESS', size: 4 * 1024 ** 3, sizeText: '4G' },
            { lun: 2, type: 'DIRECT_ACCESS', size: 511, sizeText: '511' },
            { lun: 3, type: 'MMC' },
          ],
        },
      ],
    });
    expect(() => parseIscsiLs('list_luns: iscsi_connect failed. x')).toThrow(/unexpected line/);
  });

  it('the shown size is one block short, truncated per unit', () => {
    expect(iscsiLsShownSize(64 * 1024 ** 2)).toBe(63 * 1024 ** 2);
    expect(iscsiLsShownSize(LAB_SIZE)).toBe(4 * 1024 ** 3);
    expect(iscsiLsShownSize(1024)).toBe(512);
  });
});

describe('no tgtd is left behind', () => {
  async function gone(pid: number): Promise<boolean> {
    for (let i = 0; i < 200 && isRunning(pid); i++) await sleep(50);
    return !isRunning(pid);
  }

  it('stop() kills it by pid: process gone, portal closed, state directory removed; stop() again is harmless', async () => {
    const t = await startTgtd();
    expect(isRunning(t.pid)).toBe(true);
    expect(await refused(t.port)).toBe(false);
    await t.stop();
    expect(isRunning(t.pid)).toBe(false);
    await expect(stat(`/proc/${t.pid}`)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await refused(t.port)).toBe(true);
    await expect(stat(t.stateDir)).rejects.toMatchObject({ code: 'ENOENT' });
    await t.stop();
  });

  // A test process that exits without stop() (the exit hook alone: no parent-death signal) or is
  // SIGKILLed (no hook runs: setpriv --pdeathsig).
  it.each([
    ['exits without stop()', '{ parentDeathSignal: false }', 'process.exit(3)'],
    ['is killed with SIGKILL', '{}', 'process.kill(process.pid, "SIGKILL")'],
  ])('the test process %s: its tgtd dies with it', async (_what, opts, end) => {
    const helper = projectPath('test', 'helpers', 'tgt.ts');
    const script = [
      `import { startTgtd } from ${JSON.stringify(helper)};`,
      `const t = await startTgtd(${opts});`,
      'console.log(JSON.stringify({ pid: t.pid, port: t.port, stateDir: t.stateDir }));',
      `setTimeout(() => { ${end}; }, 100);`,
    ].join('\n');
    const child = await execa(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: projectPath(), reject: false });
    const info = JSON.parse(child.stdout.trim().split('\n').at(-1) ?? '{}') as { pid: number; port: number; stateDir: string };
    try {
      expect(info.pid).toBeGreaterThan(0);
      expect(await gone(info.pid)).toBe(true);
      expect(await refused(info.port)).toBe(true);
    } finally {
      if (info.pid && isRunning(info.pid)) process.kill(info.pid, 'SIGKILL');
      if (info.stateDir) await execa('rm', ['-rf', info.stateDir]);
    }
  });
});
