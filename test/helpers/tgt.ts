// A real iSCSI target for the tests: Debian's tgtd (package tgt) as a child of the test process,
// and the userspace initiator tools of libiscsi-bin (iscsi-ls, iscsi-readcapacity16) to look at it.
//
// Each tgtd started here is private:
// - it listens only on 127.0.0.1:<a free port> (`--iscsi portal=127.0.0.1:PORT`), never on 3260;
// - its management socket lives in its own temp directory: tgtd and tgtadm (and so tgt-admin,
//   which runs tgtadm) put the socket at `$TGT_IPC_SOCKET.<control port>` (lock file: `….lock`),
//   so neither the control port (`-C`) nor the state can meet the system's tgtd (/var/run/tgtd);
// - /etc/tgt and systemd are not touched.
// tgtadm only serves root (and this machine's set-up runs as root): startTgtd refuses otherwise.
//
// Never leaving a tgtd behind — tgtd ignores SIGTERM and SIGINT (it waits for
// `tgtadm --op delete --mode system`, which it refuses while targets exist), so everything here
// uses SIGKILL, by pid:
// 1. stop() (call it from afterAll/afterEach) SIGKILLs the pid, waits for the exit, and checks that
//    the process is gone; stopAllTgtd() does so for every tgtd still running;
// 2. a process 'exit' hook SIGKILLs every tgtd still running when the test process exits, and
//    execa's own cleanup does the same on SIGINT/SIGTERM/SIGHUP of the test process;
// 3. tgtd is started through `setpriv --pdeathsig KILL`, so the kernel kills it when the test
//    process dies in a way no hook sees (SIGKILL, a crash of the worker).
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa } from 'execa';
import { run, which, type ExecEnv, type ExecResult } from '../../src/core/exec.js';
import { memoryLogger } from '../../src/core/log.js';

const HOST = '127.0.0.1';
/** How long tgtd may take to answer tgtadm after the start (a bound, not an expectation). */
const START_TIMEOUT_MS = 20_000;
const COMMAND_TIMEOUT_MS = 60_000;
const PATH_WITH_SBIN = [...new Set([...(process.env.PATH ?? '').split(':').filter(Boolean), '/usr/sbin', '/sbin', '/usr/bin', '/bin'])].join(':');

export interface Tgtd {
  /** "127.0.0.1:<port>", as iscsi:// URLs and `iscsi-ls` want it. */
  readonly portal: string;
  readonly port: number;
  /** tgtd's `-C`; pass it to tgtadm/tgt-admin together with `env`. */
  readonly controlPort: number;
  readonly pid: number;
  /** The private directory holding the management socket. */
  readonly stateDir: string;
  /** Environment for tgtadm/tgt-admin to reach this tgtd (TGT_IPC_SOCKET, PATH with /usr/sbin). */
  readonly env: Readonly<Record<string, string>>;
  /**
   * Apply a targets.conf: `tgt-admin -C <control> -c <file> --update ALL -v` by default (the
   * service's reload: targets not in the file are deleted, the others re-created from the file,
   * except targets in use), or `tgt-admin -C <control> -c <file> -e -v` with mode 'execute' (the
   * service's start: only adds targets that do not exist yet; an existing target keeps its old
   * LUNs and ACL). Rejects with an ExecError (`status`, `stderr`) when tgt-admin fails.
   */
  loadConfig(targetsConfPath: string, opts?: { mode?: 'update' | 'execute' }): Promise<ExecResult>;
  /** `tgtadm -C <control> --lld iscsi --mode target --op show`. */
  show(): Promise<string>;
  /** The portals tgtd listens on (`tgtadm --mode portal --op show`), e.g. ["127.0.0.1:3261,1"]. */
  portals(): Promise<string[]>;
  /** What tgtd printed so far (stdout and stderr). */
  output(): string;
  /** SIGKILL by pid, wait for the exit, check it is gone, remove the state directory. Idempotent. */
  stop(): Promise<void>;
}

const live = new Map<number, Tgtd>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of live.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** Stop every tgtd this process started and has not stopped yet (for afterAll). */
export async function stopAllTgtd(): Promise<void> {
  await Promise.all([...live.values()].map((t) => t.stop()));
}

/** Whether a process with this pid is running (zombies and missing pids are not). */
export function isRunning(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S …": the state follows the last ')'.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X' && state !== 'x';
}

/** A TCP port on 127.0.0.1 that nobody listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, HOST, () => {
      const addr = srv.address();
      srv.close(() => (addr && typeof addr === 'object' ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

function quietEnv(): ExecEnv {
  return { log: memoryLogger(), signal: new AbortController().signal };
}

/**
 * Start a private tgtd on 127.0.0.1. Without `port` a free one is chosen (and another one tried if
 * it was taken in between); `controlPort` defaults to a random one (1–32767, tgtd's limit).
 */
export async function startTgtd(opts: { port?: number; controlPort?: number; /** default true; false only to test the exit hook alone */ parentDeathSignal?: boolean } = {}): Promise<Tgtd> {
  if (process.getuid?.() !== 0) throw new Error('startTgtd: tgtadm only talks to tgtd as root (uid 0)');
  for (const tool of ['tgtd', 'tgtadm', 'tgt-admin', 'setpriv']) {
    if (!(await which(tool))) throw new Error(`startTgtd: ${tool} not found; install the Debian package tgt (make test does)`);
  }
  const attempts = opts.port === undefined ? 5 : 1;
  let lastError: unknown;
  for (let i = 0; i < attempts; i++) {
    const port = opts.port ?? (await freePort());
    try {
      return await startOnce(port, opts.controlPort ?? randomInt(1, 32768), opts.parentDeathSignal ?? true);
    } catch (e) {
      lastError = e;
      if (!(e instanceof PortalError)) throw e;
    }
  }
  throw lastError;
}

/** tgtd started, but not on the portal asked for (port taken: it then falls back to *:3260). */
class PortalError extends Error {}

async function startOnce(port: number, controlPort: number, parentDeathSignal: boolean): Promise<Tgtd> {
  const stateDir = await mkdtemp(join(tmpdir(), 'domu-tgtd-'));
  const env = { TGT_IPC_SOCKET: join(stateDir, 'socket'), PATH: PATH_WITH_SBIN };
  installExitHook();
  const tgtdArgs = ['-f', '-C', String(controlPort), '--iscsi', `portal=${HOST}:${port}`];
  // setpriv sets PR_SET_PDEATHSIG and execs tgtd: the pid is tgtd's own.
  const [file, args] = parentDeathSignal ? ['setpriv', ['--pdeathsig', 'KILL', '--', 'tgtd', ...tgtdArgs]] : ['tgtd', tgtdArgs];
  const child = execa(file, args, {
    env,
    extendEnv: true,
    stdin: 'ignore',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
    reject: false,
    cleanup: true,
    killSignal: 'SIGKILL',
  });
  const pid = child.pid;
  if (pid === undefined) {
    await child;
    await rm(stateDir, { recursive: true, force: true });
    throw new Error('startTgtd: could not start setpriv/tgtd');
  }
  let out = '';
  const collect = (chunk: Buffer) => {
    if (out.length < 1_000_000) out += chunk.toString('utf8');
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  let exited = false;
  const exit = child.then((r) => {
    exited = true;
    return r;
  });

  const tgtadm = (args: string[], okExitCodes = [0]) =>
    run(quietEnv(), 'tgtadm', ['-C', String(controlPort), ...args], { env, okExitCodes, timeoutMs: COMMAND_TIMEOUT_MS });

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      if (!exited) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // exited on its own meanwhile
        }
        await exit;
      }
      live.delete(pid);
      if (isRunning(pid)) throw new Error(`tgtd (pid ${pid}) still running after SIGKILL`);
      await rm(stateDir, { recursive: true, force: true });
    })());

  const tgtd: Tgtd = {
    portal: `${HOST}:${port}`,
    port,
    controlPort,
    pid,
    stateDir,
    env,
    loadConfig: (file, o = {}) =>
      run(quietEnv(), 'tgt-admin', ['-C', String(controlPort), '-c', file, ...(o.mode === 'execute' ? ['-e'] : ['--update', 'ALL']), '-v'], {
        env,
        timeoutMs: COMMAND_TIMEOUT_MS,
      }),
    show: async () => (await tgtadm(['--lld', 'iscsi', '--mode', 'target', '--op', 'show'])).stdout,
    portals: async () => {
      const { stdout } = await tgtadm(['--lld', 'iscsi', '--mode', 'portal', '--op', 'show']);
      return [...stdout.matchAll(/^Portal:\s*(\S+)/gm)].map((m) => m[1] ?? '');
    },
    output: () => out,
    stop,
  };
  live.set(pid, tgtd);

  // Ready when tgtadm gets an answer: tgtd binds its portals before it serves the socket.
  try {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (exited) throw new Error(`tgtd exited at start (exit ${(await exit).exitCode}): ${out.trim()}`);
      const r = await tgtadm(['--lld', 'iscsi', '--mode', 'portal', '--op', 'show']).catch(() => undefined);
      if (r?.exitCode === 0) break;
      if (Date.now() > deadline) throw new Error(`tgtd did not answer tgtadm within ${START_TIMEOUT_MS} ms: ${out.trim()}`);
      await sleep(50);
    }
    const portals = await tgtd.portals();
    if (portals.length !== 1 || portals[0] !== `${HOST}:${port},1`) {
      throw new PortalError(`tgtd listens on ${portals.join(' ') || 'nothing'} instead of ${HOST}:${port}: ${out.trim()}`);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  return tgtd;
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
