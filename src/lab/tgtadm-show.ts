// `tgtadm --lld iscsi --mode target --op show`, parsed. tgtadm prints an indented tree (4 spaces a
// level) and no machine format, so the lab reads the tree by its indentation:
//
//   Target 1: iqn.2015-02.com.stu31:t1
//       System information:            Driver, State
//       I_T nexus information:         I_T nexus: N / Initiator / Connection: N / IP Address
//       LUN information:               LUN: N, then its "Key: value" lines one level deeper
//       Account information:           one user a line
//       ACL information:               one initiator address (or ALL) a line
//
// Unknown sections and keys are kept (in `properties`), never fatal: a newer tgt may add lines.
// A line the tree cannot hold (wrong indentation, text before the first target) is an error,
// because then the rest would be misread.
import { DomuError } from '../core/errors.js';

export interface TgtLun {
  lun: number;
  /** "controller" (LUN 0, tgt's own), "disk", … */
  type: string;
  /** As tgtadm prints it: decimal megabytes (10^6 bytes), rounded down. */
  sizeMB: number;
  blockSize: number;
  /** "rdwr" for a file or device, "null" for the controller. */
  backingStoreType: string;
  /** undefined for tgtadm's "None". */
  backingStorePath: string | undefined;
  online: boolean;
  readonly: boolean;
  /** Every "Key: value" line of the LUN as printed. */
  properties: Record<string, string>;
}

export interface TgtNexus {
  nexus: number;
  initiator: string;
  /** The initiators' IP addresses, one for each connection. */
  addresses: string[];
}

export interface TgtTarget {
  tid: number;
  iqn: string;
  /** "System information": Driver, State. */
  system: Record<string, string>;
  nexuses: TgtNexus[];
  luns: TgtLun[];
  accounts: string[];
  /** "ACL information": initiator addresses and subnets, or ["ALL"]. */
  acl: string[];
}

/**
 * The size tgtadm shows for a LUN of `bytes` bytes: decimal MB, rounded to the nearest (seen on
 * tgt 1.0.85: 64 MiB → 67 MB, 1 GiB → 1074 MB, 1293942784 bytes → 1294 MB).
 */
export function tgtadmShownMB(bytes: number): number {
  return Math.round(bytes / 1e6);
}

interface Line {
  no: number;
  depth: number;
  text: string;
}

export function parseTgtadmShow(output: string): TgtTarget[] {
  const lines: Line[] = [];
  output.split('\n').forEach((raw, i) => {
    const text = raw.trimEnd();
    if (!text.trim()) return;
    const indent = text.length - text.trimStart().length;
    if (indent % 4 !== 0 || raw.startsWith('\t')) bad(i + 1, raw, 'indentation is not a multiple of 4 spaces');
    lines.push({ no: i + 1, depth: indent / 4, text: text.trim() });
  });

  const targets: TgtTarget[] = [];
  let target: TgtTarget | undefined;
  let section = '';
  let lun: TgtLun | undefined;
  let nexus: TgtNexus | undefined;
  for (const l of lines) {
    if (l.depth === 0) {
      const m = /^Target (\d+): (\S+)$/.exec(l.text);
      if (!m) bad(l.no, l.text, 'expected "Target N: IQN"');
      target = { tid: Number(m[1]), iqn: m[2]!, system: {}, nexuses: [], luns: [], accounts: [], acl: [] };
      targets.push(target);
      section = '';
      continue;
    }
    if (!target) bad(l.no, l.text, 'text before the first target');
    if (l.depth === 1) {
      if (!l.text.endsWith(':')) bad(l.no, l.text, 'expected a section ("… information:")');
      section = l.text.slice(0, -1);
      lun = undefined;
      nexus = undefined;
      continue;
    }
    const kv = /^([^:]+):\s?(.*)$/.exec(l.text);
    switch (section) {
      case 'System information':
        if (l.depth === 2 && kv) target.system[kv[1]!] = kv[2]!;
        break;
      case 'LUN information':
        if (l.depth === 2) {
          const m = /^LUN: (\d+)$/.exec(l.text);
          if (!m) bad(l.no, l.text, 'expected "LUN: N"');
          lun = { lun: Number(m[1]), type: '', sizeMB: 0, blockSize: 0, backingStoreType: '', backingStorePath: undefined, online: false, readonly: false, properties: {} };
          target.luns.push(lun);
        } else if (l.depth === 3 && lun && kv) {
          lun.properties[kv[1]!] = kv[2]!;
          readLunProperty(lun, kv[1]!, kv[2]!, l);
        } else bad(l.no, l.text, 'a LUN property outside a LUN');
        break;
      case 'I_T nexus information':
        if (l.depth === 2) {
          const m = /^I_T nexus: (\d+)$/.exec(l.text);
          if (!m) bad(l.no, l.text, 'expected "I_T nexus: N"');
          nexus = { nexus: Number(m[1]), initiator: '', addresses: [] };
          target.nexuses.push(nexus);
        } else if (nexus && kv?.[1] === 'Initiator') nexus.initiator = kv[2]!.replace(/ alias: .*$/, '');
        else if (nexus && kv?.[1] === 'IP Address') nexus.addresses.push(kv[2]!);
        break;
      case 'Account information':
        if (l.depth === 2) target.accounts.push(l.text);
        break;
      case 'ACL information':
        if (l.depth === 2) target.acl.push(l.text);
        break;
      default:
        // a section this parser does not know: skipped, see the head comment
        break;
    }
  }
  return targets;
}

function readLunProperty(lun: TgtLun, key: string, value: string, l: Line): void {
  switch (key) {
    case 'Type':
      lun.type = value;
      break;
    case 'Size': {
      // "67 MB, Block size: 512" — the block size shares the size's line.
      const m = /^(\d+) MB, Block size: (\d+)$/.exec(value);
      if (!m) bad(l.no, l.text, 'expected "Size: N MB, Block size: N"');
      lun.sizeMB = Number(m[1]);
      lun.blockSize = Number(m[2]);
      break;
    }
    case 'Backing store type':
      lun.backingStoreType = value;
      break;
    case 'Backing store path':
      lun.backingStorePath = value === 'None' ? undefined : value;
      break;
    case 'Online':
      lun.online = value === 'Yes';
      break;
    case 'Readonly':
      lun.readonly = value === 'Yes';
      break;
    default:
      break;
  }
}

function bad(no: number, text: string, why: string): never {
  throw new DomuError(`tgtadm --op show, line ${no} ("${text.trim()}"): ${why}; cannot read the targets`, { hint: 'a tgt version whose output domu does not know: report it with the output' });
}
