// What `domu verify` asks a booted guest through its console, and how the answers are judged;
// shared by the quick check (plain QEMU, verify.ts) and the check on real Xen (verify-xen*.ts).
//
// Every answer is a line `<tag> <kind> <data…>`, where the tag is computed by the guest's shell
// ($((6*7))), so the typed text itself (echoed before `stty -echo` ran) can never match.

/** The lines typed to read /etc/modules and load what is missing; they print `module` and `dmesg` answers. */
export const MODULE_CHECK_LINES = [
  'D=/lib/modules/$(uname -r)/modules.dep',
  // /etc/modules as rcS reads it: '#' comments, a name (modprobe with modules.dep, else insmod
  // /lib/modules/<name>.ko), a .ko name or a path (insmod), parameters after it. A module that is
  // not in /proc/modules is loaded again the same way, to hear why the kernel refuses it.
  '[ -r /etc/modules ] || echo "$P no-etc-modules"',
  'set -f; while read -r L || [ -n "$L" ]; do',
  ' L=${L%%#*}; set -- $L; [ $# -gt 0 ] || continue; M=$1; shift',
  ' N=${M##*/}; N=${N%.gz}; N=${N%.xz}; N=${N%.zst}; N=${N%.ko}; N=$(echo "$N" | tr - _)',
  ' if grep -q "^$N " /proc/modules; then echo "$P module $N loaded"; continue; fi',
  ' case $M in',
  ' */*) O=$(insmod "$M" "$@" 2>&1) ;;',
  ' *.ko) O=$(insmod "/lib/modules/$M" "$@" 2>&1) ;;',
  ' *) if [ -e "$D" ]; then O=$(modprobe "$M" "$@" 2>&1); else O=$(insmod "/lib/modules/$M.ko" "$@" 2>&1); fi ;;',
  ' esac; R=$?',
  ' if grep -q "^$N " /proc/modules; then echo "$P module $N late" $O; else echo "$P module $N refused $R" $O; fi',
  'done < /etc/modules; set +f',
  // The kernel's own complaints about modules ("<module>: Unknown symbol …").
  `dmesg | grep -E 'Unknown symbol|disagrees about version|Invalid module format|version magic|Exec format' | while read -r L; do echo "$P dmesg $L"; done`,
];

/** One tagged answer: its kind and the words after it. */
export interface Answer {
  kind: string;
  words: string[];
}

/** The tagged answers in `text` (lines without the tag are ignored). */
export function answers(text: string, tag: string): Answer[] {
  const out: Answer[] = [];
  for (const line of text.split('\n')) {
    const at = line.indexOf(`${tag} `);
    if (at < 0) continue;
    const [kind = '', ...words] = line.slice(at + tag.length + 1).trim().split(/\s+/);
    out.push({ kind, words });
  }
  return out;
}

export type ModuleVerdictKind = 'loaded' | 'no-device' | 'failed';

export interface ModuleVerdict {
  name: string;
  verdict: ModuleVerdictKind;
  /** What the guest said (modprobe/insmod message, kernel complaints). */
  detail: string;
}

export interface ModuleReport {
  etcModules: boolean;
  modules: { name: string; state: 'loaded' | 'late' | 'refused'; detail: string }[];
  dmesg: string[];
}

/** The `module`, `dmesg` and `no-etc-modules` answers. */
export function moduleReport(list: Answer[]): ModuleReport {
  const r: ModuleReport = { etcModules: true, modules: [], dmesg: [] };
  for (const { kind, words } of list) {
    if (kind === 'no-etc-modules') r.etcModules = false;
    else if (kind === 'dmesg') r.dmesg.push(words.join(' '));
    else if (kind === 'module') {
      const [name = '', state, ...detail] = words;
      // "refused <status> <message…>"
      r.modules.push({ name, state: state as 'loaded' | 'late' | 'refused', detail: (state === 'refused' ? detail.slice(1) : detail).join(' ') });
    }
  }
  return r;
}

/** Kernel messages that condemn a module whatever modprobe said. */
const BAD_MODULE = /Invalid module format|Unknown symbol|Exec format error|disagrees about version|version magic/i;

/**
 * The verdicts. A module passes when loaded; outside Xen (`underXen` false) also when refused only
 * with "No such device": ENODEV comes from the module's init function, which runs only after the
 * kernel accepted its format, vermagic and symbols — right for Xen front ends under plain QEMU,
 * and a failure on Xen, where their device exists.
 */
export function judgeModules(expected: readonly string[], r: ModuleReport, underXen: boolean): { modules: ModuleVerdict[]; notes: string[] } {
  const notes: string[] = [];
  if (!r.etcModules && expected.length) notes.push('the guest has no /etc/modules');
  const modules = r.modules.map((m): ModuleVerdict => {
    const complaints = r.dmesg.filter((l) => l.includes(`${m.name}: `) && BAD_MODULE.test(l));
    const detail = [m.state === 'late' ? 'not loaded at boot; loaded when tried again' : '', m.detail, ...complaints].filter(Boolean).join('; ');
    if (complaints.length || BAD_MODULE.test(m.detail)) return { name: m.name, verdict: 'failed', detail };
    if (m.state === 'loaded') return { name: m.name, verdict: 'loaded', detail: 'in /proc/modules' };
    if (m.state === 'refused' && /No such device/i.test(m.detail) && !underXen) {
      return { name: m.name, verdict: 'no-device', detail: `${m.detail} (format and symbols accepted; its device is absent under QEMU)` };
    }
    return { name: m.name, verdict: 'failed', detail: detail || 'refused without a message' };
  });
  const seen = new Set(modules.map((m) => m.name));
  for (const n of expected) if (!seen.has(n)) notes.push(`build.json lists module ${n}, which the guest's /etc/modules does not`);
  return { modules, notes };
}
