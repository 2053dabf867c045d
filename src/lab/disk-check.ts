// The lab's last word on the guest's disk, read where the storage server keeps it, after both
// dom0s and tgtd have stopped: `e2fsck -fn` (read-only; exit 0 = clean) of the guest's file
// system, and the file the guest wrote last read back with debugfs. With store.disk lun the disk
// is LUN 2's backing file; with file it is the image file inside the store's file system (LUN 1),
// dumped out by debugfs first, and that store file system is checked as well.
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { StageContext } from '../core/context.js';
import { run } from '../core/exec.js';

export interface LabDiskCheck {
  /** name → { ok, detail } in the order checked. */
  checks: { name: string; ok: boolean; detail: string }[];
}

export type LabDisk = { lun: string } | { store: string; image: string; dir: string };

async function fsck(ctx: StageContext, file: string): Promise<{ ok: boolean; detail: string }> {
  const r = await run(ctx, 'e2fsck', ['-fn', file], { okExitCodes: [0, 1, 2, 4, 8], timeoutMs: 300_000, missingHint: 'install e2fsprogs' });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  return { ok: r.exitCode === 0, detail: `e2fsck -fn exit ${r.exitCode}: ${last}` };
}

/** `debugfs -R 'cat <path>'` of an ext4 file: its text, or undefined when debugfs cannot read it. */
async function catFile(ctx: StageContext, fs: string, path: string): Promise<string | undefined> {
  const r = await run(ctx, 'debugfs', ['-R', `cat ${path}`, fs], { okExitCodes: [0, 1], timeoutMs: 60_000, missingHint: 'install e2fsprogs' });
  return r.exitCode === 0 && !/File not found/.test(r.stderr) ? r.stdout.trim() : undefined;
}

/** Check the guest's disk; `file`: the guest's file and what it must hold. */
export async function checkLabDisk(ctx: StageContext, disk: LabDisk, file: { path: string; expect: string | undefined }): Promise<LabDiskCheck> {
  const checks: LabDiskCheck['checks'] = [];
  let guestFs: string;
  let dumped: string | undefined;
  let release = () => {};
  if ('lun' in disk) {
    guestFs = disk.lun;
  } else {
    const s = await fsck(ctx, disk.store);
    checks.push({ name: 'store file system', ...s });
    dumped = join(disk.dir, 'guest-disk-dump.img');
    release = ctx.cleanup.tempPath(dumped);
    guestFs = dumped;
  }
  try {
    if (dumped && 'store' in disk) await run(ctx, 'debugfs', ['-R', `dump /${disk.image} ${dumped}`, disk.store], { timeoutMs: 300_000 });
    const g = await fsck(ctx, guestFs);
    checks.push({ name: 'guest disk clean', ...g });
    const text = await catFile(ctx, guestFs, file.path);
    checks.push({ name: 'last file on the guest disk', ok: text !== undefined && text === file.expect, detail: `${file.path} = ${text ?? '(missing)'}${text === file.expect ? '' : `, expected ${file.expect}`}` });
  } finally {
    if (dumped) await rm(dumped, { force: true });
    release();
  }
  return { checks };
}
