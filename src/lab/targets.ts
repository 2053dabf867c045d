// The generated storage/targets.conf made into the lab's: the same file, with exactly the lines
// that cannot hold on one machine changed, each change marked in the file and said in words.
//
// - `backing-store <path>` names the storage server's device (/dev/sda3), which does not exist
//   here: every one becomes a scratch file in the lab's directory. tgt-admin numbers a target's
//   backing stores LUN 1, 2, … in file order, so the mapping is a list in that order.
// - `initiator-address <net>` names the inventory's network (172.16.31.0/24); the lab's Dom0s reach
//   tgtd through QEMU's iSCSI client, which connects from 127.0.0.1: it becomes 127.0.0.1.
//
// Every other line stays byte for byte (the generated header included), so what the lab serves
// is what the storage server gets, but for the marked lines.
import { DomuError } from '../core/errors.js';

export const LAB_INITIATOR = '127.0.0.1';
/** Starts the comment line put before every line the lab changed. */
export const LAB_MARK = '# domu lab:';

export interface LabTargetsMapping {
  /** The lab's file for each `backing-store` line, in file order (LUN 1, 2, …). */
  backingFiles: readonly string[];
}

export interface LabTargetsLun {
  lun: number;
  /** What the generated file names (the storage server's device or file). */
  generated: string;
  /** The lab's scratch file that replaces it. */
  lab: string;
}

export interface LabTargets {
  text: string;
  /** One sentence for each changed line: what and why. */
  changes: string[];
  /** The one target's IQN. */
  iqn: string;
  luns: LabTargetsLun[];
  /** The initiator addresses tgtd will have in the target's ACL ("ALL" when the file has none). */
  acl: string[];
}

const TARGET_OPEN = /^\s*<target\s+([^>\s]+)\s*>\s*$/i;
// Config::General (tgt-admin's parser) takes `key value` and `key = value`.
const OPTION = (name: string) => new RegExp(`^(\\s*)${name}(?:\\s*=\\s*|\\s+)(\\S.*?)\\s*$`, 'i');
const BACKING_STORE = OPTION('backing-store');
const INITIATOR_ADDRESS = OPTION('initiator-address');
/** Forms whose LUN numbers or devices the lab cannot map to scratch files. */
const UNSUPPORTED = /^\s*(<backing-store\b|<direct-store\b|direct-store\b)/i;

export function labTargetsConf(text: string, mapping: LabTargetsMapping): LabTargets {
  const lines = text.split('\n');
  const iqns = lines.flatMap((l) => TARGET_OPEN.exec(stripCr(l))?.[1] ?? []);
  if (iqns.length === 0) throw new DomuError('targets.conf has no <target> block: nothing for the lab storage server to serve', { hint: 'give the generated storage/targets.conf (domu configs writes it)' });
  if (iqns.length > 1) throw new DomuError(`targets.conf has ${iqns.length} targets (${iqns.join(', ')}); the lab serves the one target domu generates`, { hint: 'give the generated storage/targets.conf' });
  const stores = lines.filter((l) => BACKING_STORE.test(stripCr(l))).length;
  if (stores !== mapping.backingFiles.length) {
    throw new DomuError(`targets.conf has ${stores} backing-store line${stores === 1 ? '' : 's'} but the lab was given ${mapping.backingFiles.length} backing file${mapping.backingFiles.length === 1 ? '' : 's'} for them`, {
      hint: 'give one lab file for each backing-store line, in file order (LUN 1, 2, …)',
    });
  }
  for (const f of mapping.backingFiles) {
    // A name tgt-admin would split or cut at a comment could not be given back as one value.
    if (!f.startsWith('/') || /[\s#"'<>]/.test(f)) throw new DomuError(`lab backing file ${JSON.stringify(f)}: needs an absolute path without white space, quotes, # or <>`, { hint: 'use a lab directory with a plain path' });
  }

  const out: string[] = [];
  const changes: string[] = [];
  const luns: LabTargetsLun[] = [];
  const acl: string[] = [];
  for (const [i, line] of lines.entries()) {
    const body = stripCr(line);
    const cr = line.slice(body.length);
    if (UNSUPPORTED.test(body)) throw new DomuError(`targets.conf line ${i + 1} ("${body.trim()}"): the lab knows only plain backing-store lines`, { hint: 'give the generated storage/targets.conf' });
    const store = BACKING_STORE.exec(body);
    if (store) {
      const [, indent, generated] = store as unknown as [string, string, string];
      const lun = luns.length + 1;
      const lab = mapping.backingFiles[luns.length]!;
      luns.push({ lun, generated, lab });
      out.push(`${indent}${LAB_MARK} LUN ${lun} was "backing-store ${generated}": not on this machine, a scratch file instead${cr}`, `${indent}backing-store ${lab}${cr}`);
      changes.push(`targets.conf: backing-store ${generated} → ${lab}: LUN ${lun}'s backing store on the storage server does not exist here; the lab uses a scratch file in its directory`);
      continue;
    }
    const initiator = INITIATOR_ADDRESS.exec(body);
    if (initiator) {
      const [, indent, net] = initiator as unknown as [string, string, string];
      acl.push(LAB_INITIATOR);
      if (net === LAB_INITIATOR) {
        out.push(line);
        continue;
      }
      out.push(`${indent}${LAB_MARK} was "initiator-address ${net}": the lab's Dom0s connect from ${LAB_INITIATOR}${cr}`, `${indent}initiator-address ${LAB_INITIATOR}${cr}`);
      changes.push(`targets.conf: initiator-address ${net} → ${LAB_INITIATOR}: the lab's Dom0s reach tgtd from ${LAB_INITIATOR} (QEMU's iSCSI client), not from the inventory's network`);
      continue;
    }
    out.push(line);
  }
  return { text: out.join('\n'), changes, iqn: iqns[0]!, luns, acl: acl.length ? [...new Set(acl)] : ['ALL'] };
}

function stripCr(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}
