// The guest's own network (`guest.network`): eth0 with a static address, by DHCP, or not at all.
//   guest.network: { address: 172.16.31.4/16, gateway: 172.16.0.1 }   (the default address;
//                                                 gateway: network.gateway unless given, or none)
//   guest.network: dhcp                          busybox udhcpc
//   guest.network: none                          eth0 is left alone
// The address is the guest's on every host (it migrates with the guest), so it must not be a
// Dom0's, the store server's or the gateway's. What the guest gets is a data file,
// /etc/network.conf (KEY=value lines), which rcS reads with `read`: no value of the description
// is ever put into a script that runs in the guest.
import { z } from 'zod';
import { expected, IPV4_RE, oneOf, section, text } from './schema-parts.js';

/** Where the rootfs stage writes the settings in the guest, and rcS reads them. */
export const NETWORK_FILE = 'etc/network.conf';

const CIDR_HOST_RE = /^(\d{1,3}(?:\.\d{1,3}){3})\/(\d{1,2})$/;

function toInt(ip: string): number {
  return ip.split('.').reduce((acc, o) => acc * 256 + Number(o), 0);
}

/** `a.b.c.d/n` as address and prefix, when it is one (octets 0–255, prefix 1–32). */
function splitCidr(s: string): { address: string; prefix: number } | undefined {
  const m = CIDR_HOST_RE.exec(s);
  if (!m || !IPV4_RE.test(m[1]!)) return undefined;
  const prefix = Number(m[2]);
  return prefix >= 1 && prefix <= 32 ? { address: m[1]!, prefix } : undefined;
}

function subnetOf(address: string, prefix: number): { network: number; broadcast: number } {
  const size = 2 ** (32 - prefix);
  const network = Math.floor(toInt(address) / size) * size;
  return { network, broadcast: network + size - 1 };
}

const ADDRESS = 'an IPv4 address with its prefix length, like 172.16.31.4/16';

const staticNetwork = section('static network settings', {
  address: text(ADDRESS, (s) => splitCidr(s) !== undefined),
  /** The default route; default: network.gateway; `none`: no default route. */
  gateway: text('an IPv4 address like 172.16.0.1, or none', (s) => s === 'none' || IPV4_RE.test(s)).optional(),
});

export const guestNetworkSchema = z.union([oneOf(['dhcp', 'none'] as const), staticNetwork], {
  error: (iss) => (iss.code === 'invalid_union' ? expected('dhcp, none or a mapping { address: <ip>/<prefix>, gateway: <ip> }', iss.input) : undefined),
});

export type GuestNetworkSetting = z.output<typeof guestNetworkSchema>;

/** The keys of the static form (unknown-key messages). */
export const STATIC_NETWORK_KEYS = Object.keys(staticNetwork.shape);

/** What the guest configures, every default applied. */
export type GuestNetwork =
  | { mode: 'static'; address: string; prefix: number; gateway: string | null }
  | { mode: 'dhcp' }
  | { mode: 'none' };

interface NetworkContext {
  guest: { network: GuestNetworkSetting };
  network: { gateway: string };
  hosts: readonly { name: string; address: string }[];
  store: { server: string };
}

/** guest.network with its defaults applied (the gateway from network.gateway). */
export function guestNetwork(d: Pick<NetworkContext, 'guest' | 'network'>): GuestNetwork {
  const n = d.guest.network;
  if (n === 'dhcp' || n === 'none') return { mode: n };
  const { address, prefix } = splitCidr(n.address)!;
  const gateway = n.gateway ?? d.network.gateway;
  return { mode: 'static', address, prefix, gateway: gateway === 'none' ? null : gateway };
}

/** The problems of a static address in its inventory, each at the key to fix. */
export function guestNetworkIssues(d: NetworkContext): { path: (string | number)[]; message: string }[] {
  const setting = d.guest.network;
  if (typeof setting !== 'object' || splitCidr(setting.address) === undefined) return []; // reported by the schema
  const n = guestNetwork(d);
  if (n.mode !== 'static') return [];
  const issues: { path: (string | number)[]; message: string }[] = [];
  const at = ['guest', 'network', 'address'];
  const { network, broadcast } = subnetOf(n.address, n.prefix);
  const ip = toInt(n.address);
  if (n.prefix <= 30 && (ip === network || ip === broadcast)) {
    issues.push({ path: at, message: `${n.address}/${n.prefix} is the ${ip === network ? 'network' : 'broadcast'} address of its subnet, not a host's (expected ${ADDRESS})` });
  }
  d.hosts.forEach((h, i) => {
    if (h.address === n.address) issues.push({ path: at, message: `${n.address} is also hosts.${i}.address (${h.name}): the guest needs an address of its own` });
  });
  if (d.store.server === n.address) issues.push({ path: at, message: `${n.address} is also store.server: the guest needs an address of its own` });
  if (n.gateway !== null) {
    // Given: at guest.network.gateway; else at guest.network, which takes network.gateway.
    const given = setting.gateway !== undefined;
    const gwPath = given ? ['guest', 'network', 'gateway'] : ['guest', 'network'];
    const source = given ? `${n.gateway}` : `no gateway is given, and network.gateway ${n.gateway} (the default)`;
    const fix = given ? 'give a gateway in it, or gateway: none' : 'give guest.network.gateway in it, or gateway: none';
    if (n.gateway === n.address) issues.push({ path: gwPath, message: `${source} is the guest's own address (guest.network.address)` });
    else if (toInt(n.gateway) < network || toInt(n.gateway) > broadcast) {
      issues.push({ path: gwPath, message: `${source} is outside the guest's subnet ${n.address}/${n.prefix}: ${fix}` });
    }
  }
  return issues;
}

/** The busybox applets rcS runs for these settings (the rootfs stage checks the build has them). */
export function networkApplets(n: GuestNetwork): string[] {
  return n.mode === 'static' ? ['ip'] : n.mode === 'dhcp' ? ['ip', 'udhcpc'] : [];
}

/**
 * The text of /etc/network.conf: comment lines, then `mode=static|dhcp|none` and, for static,
 * `address=<ip>/<prefix>` and `gateway=<ip>` (absent: no default route). Values were validated
 * (digits, dots and a slash only); rcS passes each as one argument, never through eval.
 */
export function networkFileText(n: GuestNetwork): string {
  const lines = [
    '# The guest\'s network, written by domu-builder from guest.network in guest.yaml.',
    '# Read by /etc/rc.d/rcS as data (KEY=value, one per line; never run as a script):',
    '# mode=static|dhcp|none, and for static address=<ip>/<prefix> and gateway=<ip>.',
    `mode=${n.mode}`,
  ];
  if (n.mode === 'static') {
    lines.push(`address=${n.address}/${n.prefix}`);
    if (n.gateway !== null) lines.push(`gateway=${n.gateway}`);
  }
  return `${lines.join('\n')}\n`;
}

/** The prefix length of a dotted netmask (schema-checked: ones then zeros), e.g. 255.255.0.0 → 16. */
export function netmaskPrefix(mask: string): number {
  return mask.split('.').reduce((n, o) => n + Number(o).toString(2).replace(/0/g, '').length, 0);
}
