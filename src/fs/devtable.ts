// The device table (`rootfs-devices.txt`): the device nodes of the guest's /dev, one per line:
//   path type mode uid gid major minor      e.g. /dev/console c 0600 0 0 5 1
// `#` starts a comment (to the end of the line); blank lines are ignored. The rootfs stage cannot
// create nodes without privileges, so the table travels as data to the image stage.
import { InputError } from '../core/errors.js';

/** A device node to create in the guest (the image stage and debugfs take this shape). */
export interface DeviceSpec {
  /** Absolute in the guest, e.g. /dev/console. */
  path: string;
  /** Character or block device. */
  type: 'c' | 'b';
  /** Permission bits (with setuid/setgid/sticky), ≤ 0o7777. */
  mode: number;
  uid: number;
  gid: number;
  major: number;
  minor: number;
}

/** A node as read from the table. */
export interface DeviceNode extends DeviceSpec {
  /** Line of the table it came from (1-based). */
  line: number;
}

/** Largest major and minor numbers Linux allows (12 and 20 bits). */
export const MAX_MAJOR = 4095;
export const MAX_MINOR = 1048575;
/** Largest uid/gid (32 bits; 4294967295 is "no id"). */
export const MAX_ID = 4294967294;

const FIELDS = ['path', 'type', 'mode', 'uid', 'gid', 'major', 'minor'] as const;

/**
 * Parse a device table. `label` names the table in errors (`label:LINE: …`), usually its path.
 * Errors are InputErrors naming the line and what is wrong with it; the first one found stops.
 */
export function parseDeviceTable(text: string, label: string): DeviceNode[] {
  const nodes: DeviceNode[] = [];
  const seen = new Map<string, number>();
  const lines = text.split(/\r?\n/);
  lines.forEach((raw, i) => {
    const line = i + 1;
    const fail: (msg: string) => never = (msg) => {
      throw new InputError(`${label}:${line}: ${msg}`, 'each line is: path type mode uid gid major minor, e.g. /dev/console c 0600 0 0 5 1');
    };
    const hash = raw.indexOf('#');
    const content = (hash < 0 ? raw : raw.slice(0, hash)).trim();
    if (content === '') return;
    const f = content.split(/\s+/);
    if (f.length !== FIELDS.length) {
      fail(`expected ${FIELDS.length} fields (${FIELDS.join(' ')}), got ${f.length}: ${JSON.stringify(content)}`);
    }
    const [path, type, mode, uid, gid, major, minor] = f as [string, string, string, string, string, string, string];

    if (!path.startsWith('/')) fail(`path ${JSON.stringify(path)} is not absolute (write /dev/…)`);
    if (/[\s\x00-\x1f\x7f]/.test(path)) fail(`path ${JSON.stringify(path)} contains whitespace or control characters`);
    const parts = path.slice(1).split('/');
    if (parts.includes('..')) fail(`path ${JSON.stringify(path)} contains ..`);
    if (parts.some((p) => p === '' || p === '.')) fail(`path ${JSON.stringify(path)} is not a plain path (no //, /./ or trailing /)`);

    if (type !== 'c' && type !== 'b') fail(`type ${JSON.stringify(type)} of ${path} is not c (character) or b (block)`);

    if (!/^[0-7]{1,5}$/.test(mode)) fail(`mode ${JSON.stringify(mode)} of ${path} is not an octal number like 0660`);
    const modeValue = parseInt(mode, 8);
    if (modeValue > 0o7777) fail(`mode ${mode} of ${path} is larger than 07777`);

    const num = (name: string, s: string, max: number): number => {
      if (!/^\d+$/.test(s)) fail(`${name} ${JSON.stringify(s)} of ${path} is not a decimal number`);
      const n = Number(s);
      if (!Number.isSafeInteger(n) || n > max) fail(`${name} ${s} of ${path} is out of range (0 to ${max})`);
      return n;
    };
    const node: DeviceNode = {
      path,
      type,
      mode: modeValue,
      uid: num('uid', uid, MAX_ID),
      gid: num('gid', gid, MAX_ID),
      major: num('major', major, MAX_MAJOR),
      minor: num('minor', minor, MAX_MINOR),
      line,
    };

    const first = seen.get(path);
    if (first !== undefined) fail(`duplicate path ${path} (already on line ${first})`);
    seen.set(path, line);
    nodes.push(node);
  });
  return nodes;
}

/** A node as a table line (for logs and the content hash). */
export function formatDeviceNode(n: DeviceNode): string {
  return `${n.path} ${n.type} ${n.mode.toString(8).padStart(4, '0')} ${n.uid} ${n.gid} ${n.major} ${n.minor}`;
}
