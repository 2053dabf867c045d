// A real iSCSI target for the tests: Debian's tgtd (package tgt), the lab's private tgtd of
// src/lab/tgtd.ts (127.0.0.1 and a free port, its own control socket directory, setpriv
// --pdeathsig KILL, SIGKILL by pid, an exit hook; read its head comment), here with a quiet log and
// a cleanup registry of its own; and the userspace initiator tools of libiscsi-bin (iscsi-ls,
// iscsi-readcapacity16) to look at it.
// Call stop() or stopAllTgtd() from afterAll/afterEach; the exit hook and the parent-death signal
// cover a worker that dies before that.
import { connect } from 'node:net';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';
import { startTgtd as startLabTgtd, type Tgtd } from '../../src/lab/tgtd.js';

export { freePort, isRunning, stopAllTgtd, type Tgtd } from '../../src/lab/tgtd.js';

const COMMAND_TIMEOUT_MS = 60_000;

function quietEnv(): ExecEnv {
  return { log: memoryLogger(), signal: new AbortController().signal };
}

/**
 * Start a private tgtd on 127.0.0.1. Without `port` a free one is chosen (and another one tried if
 * it was taken in between); `controlPort` defaults to a random one (1–32767, tgtd's limit).
 */
export async function startTgtd(opts: { port?: number; controlPort?: number; /** default true; false only to test the exit hook alone */ parentDeathSignal?: boolean } = {}): Promise<Tgtd> {
  return startLabTgtd({ ...quietEnv(), cleanup: new CleanupRegistry() }, opts);
}

/** Whether a TCP connection to 127.0.0.1:`port` is refused (nobody listens there). */
export async function refused(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

export interface IscsiLun {
  lun: number;
  /** SCSI device type as iscsi-ls names it: DIRECT_ACCESS (a disk), STORAGE_ARRAY_CONTROLLER (tgt's LUN 0), … */
  type: string;
  /**
   * Bytes, as far as iscsi-ls tells: it prints block size × the last LBA (one block less than the
   * capacity) divided by 1024 while above 1024, truncated, with a unit (" ", k, M, G, T). This is
   * that number times its unit: a lower bound (see iscsiLsShownSize); exact: iscsiCapacity().
   */
  size?: number;
  /** The size as printed, e.g. "63M". */
  sizeText?: string;
}

export interface IscsiLsTarget {
  iqn: string;
  /** "127.0.0.1:3261,1" (address, port, target portal group). */
  portals: string[];
  luns: IscsiLun[];
}

const UNIT: Record<string, number> = { ' ': 1, k: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

/** Parse `iscsi-ls -s` output (also plain `iscsi-ls`, whose targets then have no LUNs). */
export function parseIscsiLs(stdout: string): { targets: IscsiLsTarget[] } {
  const targets: IscsiLsTarget[] = [];
  let current: IscsiLsTarget | undefined;
  for (const line of stdout.split('\n')) {
    if (!line.trim()) continue;
    const t = /^Target:(\S+) Portal:(\S+)$/.exec(line);
    if (t) {
      const iqn = t[1] ?? '';
      current = targets.find((x) => x.iqn === iqn);
      if (!current) targets.push((current = { iqn, portals: [], luns: [] }));
      current.portals.push(t[2] ?? '');
      continue;
    }
    const l = /^Lun:(\d+)\s+Type:(\S+)(?: \(Size:(\d+)([ kMGT])\))?(?: \(No media loaded\))?$/.exec(line);
    if (l && current) {
      const lun: IscsiLun = { lun: Number(l[1]), type: l[2] ?? '' };
      if (l[3] !== undefined && l[4] !== undefined) {
        lun.size = Number(l[3]) * (UNIT[l[4]] ?? 1);
        lun.sizeText = `${l[3]}${l[4]}`.trim();
      }
      if (!current.luns.some((x) => x.lun === lun.lun)) current.luns.push(lun);
      continue;
    }
    throw new Error(`iscsi-ls: unexpected line: ${line}`);
  }
  return { targets };
}

/** The size iscsi-ls shows for a disk of `bytes` bytes in `blockSize` blocks, in bytes (see IscsiLun.size). */
export function iscsiLsShownSize(bytes: number, blockSize = 512): number {
  let size = (bytes / blockSize - 1) * blockSize;
  let unit = 1;
  while (unit < 1024 ** 4 && size > 1024) {
    size = Math.floor(size / 1024);
    unit *= 1024;
  }
  return size * unit;
}

/** `iscsi-ls -s iscsi://<portal>`: SendTargets discovery, then a login to each target for its LUNs. */
export async function iscsiLs(portal: string, env: ExecEnv = quietEnv()): Promise<{ targets: IscsiLsTarget[] }> {
  const { stdout } = await run(env, 'iscsi-ls', ['-s', `iscsi://${portal}`], { timeoutMs: COMMAND_TIMEOUT_MS, missingHint: 'install the Debian package libiscsi-bin' });
  return parseIscsiLs(stdout);
}

/** `iscsi-readcapacity16 iscsi://<portal>/<iqn>/<lun>`: logs in to the target and reads the exact capacity. */
export async function iscsiCapacity(portal: string, iqn: string, lun: number, env: ExecEnv = quietEnv()): Promise<{ blockSize: number; bytes: number }> {
  const { stdout } = await run(env, 'iscsi-readcapacity16', [`iscsi://${portal}/${iqn}/${lun}`], { timeoutMs: COMMAND_TIMEOUT_MS, missingHint: 'install the Debian package libiscsi-bin' });
  const bytes = /^Total size:(\d+)$/m.exec(stdout)?.[1];
  const blockSize = /^LOGICAL BLOCK LENGTH IN BYTES:(\d+)$/m.exec(stdout)?.[1];
  if (bytes === undefined || blockSize === undefined) throw new Error(`iscsi-readcapacity16: unexpected output: ${stdout}`);
  return { blockSize: Number(blockSize), bytes: Number(bytes) };
}
