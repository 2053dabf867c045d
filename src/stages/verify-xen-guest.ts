// The guest under real Xen, spoken to through dom0 (verify-xen.ts runs the phases): what is typed
// on the guest's console and in dom0's shell, and what the answers mean.
//
// Nothing typed here carries a value of the description. The guest finds dom0's address in its
// own ARP table (dom0 pings it first); dom0 reads the guest's name, address and paths from its
// parameter files (`$DOMU_GUEST`, `$DOMU_GUEST_ADDRESS`, … set by its /init from data files).
import { answers, judgeModules, MODULE_CHECK_LINES, moduleReport, type ModuleVerdict } from './verify-checks.js';

export const GUEST_TAG = 'DOMU-XEN-42';
export const GUEST_FILE = '/domu-verify.txt';

/** A ping from the guest to every address its ARP table learned on eth0 (dom0's, once dom0 pinged it). */
const PING_LINES = [
  'N=0; while read -r IP HW F MAC MASK DEV; do if [ "$DEV" = eth0 ] && [ "$F" = 0x2 ]; then ping -c 2 -w 10 "$IP" >/dev/null 2>&1; echo "$P ping $IP $?"; N=$((N+1)); fi; done < /proc/net/arp',
  'echo "$P pinged $N"',
];

/**
 * What is typed on the guest's console, by name. dom0 gets them as files (etc/domu-scripts/, in
 * its run's ramdisk) and `domu-guest-send` writes one to the guest's console pty; each ends with
 * an answer the host side waits for.
 */
export const GUEST_SCRIPTS = {
  /** Enter first (for an askfirst console), then a quiet shell with the tag; typed until it answers. */
  'guest-hello': ['', 'stty -echo; PS1=; PS2=; P=DOMU-XEN-$((6*7)); echo "$P ready"'],
  /** The facts read after the ready marker. */
  'guest-checks': [
    'echo "$P applets $(busybox --list | wc -l)"',
    'echo "$P release $(uname -r)"',
    'while read -r D M T O R; do [ "$M" = / ] && echo "$P root $D $T $O"; done < /proc/mounts',
    ...MODULE_CHECK_LINES,
    'ip addr show dev eth0 2>&1 | while read -r L; do echo "$P ip $L"; done',
    'read -r U I < /proc/uptime; echo "$P uptime $U"',
    'echo "$P end"',
  ],
  'guest-pings': [...PING_LINES, 'echo "$P end"'],
  /** A file on the guest's root disk (remounted read-write), its content a fresh UUID. */
  'guest-write': [
    'mount -o remount,rw / 2>&1; read -r T < /proc/sys/kernel/random/uuid',
    `echo "$T" > ${GUEST_FILE} && sync && echo "$P wrote $T" || echo "$P wrote-failed"`,
    'echo "$P end"',
  ],
  /** Heartbeats while the guest moves: the gaps in its own uptime are the pause. */
  'guest-hb-start': ['( while :; do read -r U I < /proc/uptime; echo "$P hb $U"; usleep 200000; done ) & H=$!'],
  'guest-hb-stop': ['kill $H; echo "$P hb-stopped"'],
  /** After a migration or restore: the same guest? (uptime, its file, a fresh ping). */
  'guest-after': [
    'read -r U I < /proc/uptime; echo "$P uptime $U"',
    `read -r F < ${GUEST_FILE}; echo "$P file $F"`,
    'ip -4 addr show dev eth0 2>&1 | while read -r L; do echo "$P ip $L"; done',
    ...PING_LINES,
    'echo "$P end"',
  ],
  'guest-poweroff': ['poweroff'],
} as const;

export type GuestScript = keyof typeof GUEST_SCRIPTS;

/** The scripts as dom0's files. */
export function guestScriptFiles(): Record<string, string> {
  return Object.fromEntries(Object.entries(GUEST_SCRIPTS).map(([n, lines]) => [n, `${lines.join('\n')}\n`]));
}

export interface GuestFacts {
  applets: number;
  release: string;
  root: { device: string; type: string; options: string } | undefined;
  modules: ModuleVerdict[];
  moduleNotes: string[];
  /** inet addresses of eth0 as `a.b.c.d/prefix`. */
  addresses: string[];
  /** eth0's state as `ip addr` prints it (e.g. UP,LOWER_UP), or undefined when eth0 is missing. */
  eth0: string | undefined;
  uptime: number;
}

export function parseGuestFacts(text: string, expectedModules: readonly string[]): GuestFacts {
  const list = answers(text, GUEST_TAG);
  const { modules, notes } = judgeModules(expectedModules, moduleReport(list), true);
  const facts: GuestFacts = { applets: -1, release: '', root: undefined, modules, moduleNotes: notes, addresses: [], eth0: undefined, uptime: NaN };
  for (const { kind, words } of list) {
    if (kind === 'applets') facts.applets = Number(words[0]);
    else if (kind === 'release') facts.release = words[0] ?? '';
    // The last mount on / is the one in use (an initramfs' rootfs may be listed under it).
    else if (kind === 'root') facts.root = { device: words[0] ?? '', type: words[1] ?? '', options: words[2] ?? '' };
    else if (kind === 'uptime') facts.uptime = Number(words[0]);
    else if (kind === 'ip') {
      const line = words.join(' ');
      const flags = /^\d+:\s*eth0:\s*<([^>]*)>/.exec(line);
      if (flags) facts.eth0 = flags[1];
      const inet = /^inet\s+(\d+\.\d+\.\d+\.\d+\/\d+)/.exec(line);
      if (inet) facts.addresses.push(inet[1]!);
    }
  }
  return facts;
}

export interface PingResult {
  /** Address → ping's exit status. */
  pinged: { address: string; status: number }[];
}

export function parsePings(text: string): PingResult {
  const pinged: PingResult['pinged'] = [];
  for (const { kind, words } of answers(text, GUEST_TAG)) if (kind === 'ping') pinged.push({ address: words[0] ?? '', status: Number(words[1]) });
  return { pinged };
}

export function parseAfter(text: string): { uptime: number; file: string; addresses: string[] } & PingResult {
  const r = { uptime: NaN, file: '', addresses: [] as string[], ...parsePings(text) };
  for (const { kind, words } of answers(text, GUEST_TAG)) {
    if (kind === 'uptime') r.uptime = Number(words[0]);
    else if (kind === 'file') r.file = words[0] ?? '';
    else if (kind === 'ip') {
      const inet = /^inet\s+(\d+\.\d+\.\d+\.\d+\/\d+)/.exec(words.join(' '));
      if (inet) r.addresses.push(inet[1]!);
    }
  }
  return r;
}

/** The written file's UUID, or undefined when the write failed. */
export function parseWritten(text: string): string | undefined {
  for (const { kind, words } of answers(text, GUEST_TAG)) if (kind === 'wrote') return words[0];
  return undefined;
}

/**
 * The guest's pause while it moved: the longest gap between two heartbeats in its own uptime,
 * less the heartbeat interval (0.2 s). NaN without two heartbeats.
 */
export function pauseOf(text: string): number {
  const beats = answers(text, GUEST_TAG).filter((a) => a.kind === 'hb').map((a) => Number(a.words[0])).filter(Number.isFinite);
  let gap = NaN;
  for (let i = 1; i < beats.length; i++) {
    const d = beats[i]! - beats[i - 1]!;
    if (!(d <= gap)) gap = d;
  }
  return Number.isFinite(gap) ? Math.max(0, Math.round((gap - 0.2) * 100) / 100) : NaN;
}
