// The lab's storage server: the generated targets.conf, made the lab's (targets.ts), served by a
// private tgtd on 127.0.0.1 (tgtd.ts), and checked the way an administrator would check the real
// one (`tgtadm --op show`: the target, LUN 1..n with their backing files and sizes, the ACL).
// The check matters: tgt-admin skips a backing store that is missing or in use and still exits 0,
// so "loaded" proves nothing until the LUNs are seen.
import { mkdir, open, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { DomuError } from '../core/errors.js';
import { labTargetsConf } from './targets.js';
import { startTgtd, type Tgtd, type TgtdEnv, type TgtdOptions } from './tgtd.js';
import { tgtadmShownMB, type TgtTarget } from './tgtadm-show.js';

export interface BackingFile {
  /** Absolute, or relative to the lab's directory; created sparse when missing, used as it is when it exists (a regular file). */
  path: string;
  /** Bytes: the size to create it with; when the file exists, it must have this size. */
  size?: number | undefined;
}

export interface StorageServerSpec {
  /** The lab's directory: targets.conf is written here (and relative backing files live here). */
  dir: string;
  /** The generated storage/targets.conf's text. */
  targetsConf: string;
  /**
   * One for each backing store of targetsConf (a line or a <backing-store> block), in the order of
   * the lines. A block states its LUN; plain lines tgt-admin numbers by their sorted paths, so for
   * those these files must sort as the generated paths do (targets.ts).
   */
  backingFiles: readonly BackingFile[];
  /** For tgtd: port, control port, state directory (default a temp directory). */
  tgtd?: TgtdOptions | undefined;
}

export interface StorageServerLun {
  lun: number;
  path: string;
  size: number;
}

export interface StorageServer {
  /** "127.0.0.1:<port>" */
  portal: string;
  port: number;
  iqn: string;
  luns: StorageServerLun[];
  /** `iscsi://127.0.0.1:<port>/<iqn>/<lun>`, as QEMU's -drive file= takes it. */
  lunUrl(lun: number): string;
  /** The lab's changes to targets.conf, one sentence each (targets.ts). */
  changes: string[];
  /** Where the lab's targets.conf was written. */
  targetsConfPath: string;
  tgtd: Tgtd;
  /** Kill tgtd and remove its state directory; the backing files and targets.conf stay. Idempotent. */
  stop(): Promise<void>;
}

export async function startStorageServer(spec: StorageServerSpec, ctx: TgtdEnv): Promise<StorageServer> {
  const dir = resolve(spec.dir);
  const files = spec.backingFiles.map((f) => ({ ...f, path: resolve(dir, f.path) }));
  const lab = labTargetsConf(spec.targetsConf, { backingFiles: files.map((f) => f.path) });
  const luns: StorageServerLun[] = [];
  const created: string[] = [];
  const targetsConfPath = join(dir, 'targets.conf');
  let started: Tgtd | undefined;
  try {
    await mkdir(dir, { recursive: true });
    for (const l of lab.luns) luns.push({ lun: l.lun, path: l.lab, size: await backingFile(files.find((f) => f.path === l.lab)!, created, ctx) });
    await writeFile(targetsConfPath, lab.text);
    started = await startTgtd(ctx, spec.tgtd);
    const loaded = await started.loadConfig(targetsConfPath);
    const target = (await started.targets()).find((t) => t.iqn === lab.iqn);
    checkTarget(target, lab.iqn, luns, lab.acl, loaded.stdout);
  } catch (e) {
    await started?.stop();
    // Only what this call made goes: a given backing file is the caller's.
    for (const p of created) await rm(p, { force: true });
    throw e;
  }
  const tgtd = started;
  ctx.log.info(`lab storage server: ${lab.iqn} on ${tgtd.portal}, ${luns.map((l) => `LUN ${l.lun} ${l.path}`).join(', ')}`);
  // The changes are the caller's to report (domu lab prints each as a warning).
  return {
    portal: tgtd.portal,
    port: tgtd.port,
    iqn: lab.iqn,
    luns,
    lunUrl: (lun) => {
      if (!luns.some((l) => l.lun === lun)) throw new DomuError(`the lab target has no LUN ${lun} (it has ${luns.map((l) => l.lun).join(', ')})`);
      return `iscsi://${tgtd.portal}/${lab.iqn}/${lun}`;
    },
    changes: lab.changes,
    targetsConfPath,
    tgtd,
    stop: () => tgtd.stop(),
  };
}

/** Make or check one backing file; its size in bytes. A file made here is listed in `created`. */
async function backingFile(f: BackingFile, created: string[], ctx: TgtdEnv): Promise<number> {
  const st = await stat(f.path).catch((e: NodeJS.ErrnoException) => (e.code === 'ENOENT' ? undefined : Promise.reject(e)));
  if (st) {
    if (!st.isFile()) throw new DomuError(`lab backing file ${f.path} is not a regular file`, { hint: 'give a file (or a missing path and a size to create it)' });
    if (f.size !== undefined && st.size !== f.size) throw new DomuError(`lab backing file ${f.path} has ${st.size} bytes, not the ${f.size} asked for`, { hint: 'remove it to have it made anew, or give its size' });
    return st.size;
  }
  if (f.size === undefined || !Number.isInteger(f.size) || f.size < 512 || f.size % 512 !== 0) {
    throw new DomuError(`lab backing file ${f.path} does not exist and has no size to create it with (a multiple of 512 bytes)`, { hint: 'give its size' });
  }
  // Sparse: the lab's LUNs cost only what is written to them.
  const fh = await open(f.path, 'wx');
  created.push(f.path);
  try {
    await fh.truncate(f.size);
  } finally {
    await fh.close();
  }
  ctx.log.debug(`lab backing file ${f.path}: created sparse, ${f.size} bytes`);
  return f.size;
}

/** The target as `tgtadm --op show` has it against what the lab asked for; throws on a difference. */
function checkTarget(target: TgtTarget | undefined, iqn: string, luns: readonly StorageServerLun[], acl: readonly string[], tgtAdminOut: string): void {
  // tgt-admin's "# Device … is used …" and "# Skipping device …" lines say why a LUN is missing.
  const skipped = tgtAdminOut.split('\n').filter((l) => /^# (Device .* is used|Skipping device)/.test(l)).map((l) => l.replace(/^#\s*/, ''));
  const why = skipped.length ? `; tgt-admin said: ${skipped.join(' | ')}` : '';
  if (!target) throw new DomuError(`lab storage server: tgtd has no target ${iqn} after tgt-admin --update ALL${why}`);
  const disks = target.luns.filter((l) => l.lun !== 0);
  const want = luns.map((l) => l.lun).join(', ');
  const got = disks.map((l) => l.lun).join(', ') || 'none';
  if (got !== want) throw new DomuError(`lab storage server: ${iqn} has LUN ${got}, expected LUN ${want}${why}`, { hint: 'is a backing file missing or used by another tgtd?' });
  for (const l of luns) {
    const shown = disks.find((d) => d.lun === l.lun)!;
    if (shown.backingStorePath !== l.path) throw new DomuError(`lab storage server: LUN ${l.lun} is backed by ${shown.backingStorePath ?? 'nothing'}, expected ${l.path}`);
    if (shown.sizeMB !== tgtadmShownMB(l.size)) throw new DomuError(`lab storage server: LUN ${l.lun} has ${shown.sizeMB} MB, expected ${tgtadmShownMB(l.size)} MB (${l.size} bytes)`);
    if (shown.type !== 'disk' || !shown.online) throw new DomuError(`lab storage server: LUN ${l.lun} is ${shown.online ? '' : 'offline, '}of type ${shown.type}, expected an online disk`);
  }
  if (target.acl.join(' ') !== acl.join(' ')) throw new DomuError(`lab storage server: ${iqn} admits ${target.acl.join(', ') || 'nobody'}, expected ${acl.join(', ')}`);
}
