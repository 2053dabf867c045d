// Values for Xen domain configs and the Dom0 host files, derived and quoted safely.
//   - MAC and UUID derive from the guest name (sha256), so every host's config and every rebuild
//     agree without any state; the MAC lies inside Xen's OUI 00:16:3e with the next bit clear
//     (00:16:3e:00:00:00–7f:ff:ff, the range Xen's own tools pick from).
//   - A value is written into a config only through `quoted`, which refuses what the grammars
//     (xl's libxlu, xend's sxp, ifcfg shell syntax) cannot carry safely: quotes, backslashes,
//     `#` and control characters. The schema already refuses them at plan time; this is the last
//     line of defence and names the key.
import { createHash } from 'node:crypto';
import { InputError } from '../core/errors.js';

/** What no value written into a generated config may contain (the schema checks it at plan time). */
export const CONFIG_UNSAFE = /["'\\#\x00-\x1f\x7f]/;

/** `value` in double quotes, or an InputError naming `key` when it cannot be written safely. */
export function quoted(value: string, key: string): string {
  const found = CONFIG_UNSAFE.exec(value);
  if (found) {
    const bad = found[0];
    const what = bad === '"' || bad === "'" ? 'a quote' : bad === '\\' ? 'a backslash' : bad === '#' ? 'a # (a comment in config files)' : 'a control character';
    throw new InputError(`${key}: ${JSON.stringify(value)} contains ${what}, which cannot be written safely into a Xen or host config`, `remove it from ${key}`);
  }
  return `"${value}"`;
}

/** The guest's console: hvc0 for PV and PVH (PVH would write to tty0 without it). */
export const GUEST_CONSOLE = 'console=hvc0';

/** guest.extra as the guest gets it: console=hvc0 first, unless extra names a console itself. */
export function guestExtra(extra: string): string {
  const words = extra.split(/\s+/).filter(Boolean);
  return (words.some((w) => w.startsWith('console=')) ? words : [GUEST_CONSOLE, ...words]).join(' ');
}

/** The guest kernel's whole command line (xl's cmdline; xm's root + extra make the same). */
export function guestCmdline(root: string, extra: string): string {
  return `root=${root} ${guestExtra(extra)}`;
}

function digest(label: string, name: string): Buffer {
  return createHash('sha256').update(`domu-builder ${label}\0${name}`).digest();
}

/** The guest's MAC when none is given: 00:16:3e:XX:XX:XX from the guest name. */
export function derivedMac(guestName: string): string {
  const d = digest('mac', guestName);
  const bytes = [0x00, 0x16, 0x3e, d[0]! & 0x7f, d[1]!, d[2]!];
  return bytes.map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** A name-based UUID (RFC 4122 layout, version 5 bits, from sha256) for the guest. */
export function derivedUuid(guestName: string): string {
  const d = digest('uuid', guestName).subarray(0, 16);
  d[6] = (d[6]! & 0x0f) | 0x50;
  d[8] = (d[8]! & 0x3f) | 0x80;
  const h = d.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** xend's relocation allow-list: one anchored regex per address (dots escaped as sxp needs). */
export function relocationAllow(addresses: readonly string[]): string {
  return addresses.map((a) => `^${a.replace(/\./g, '\\\\.')}$`).join(' ');
}
