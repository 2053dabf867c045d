// The generated storage/targets.conf made into the lab's: the same file, with exactly the lines
// that cannot hold on one machine changed, each change marked in the file and said in words.
//
// - `backing-store <path>` names the storage server's device (/dev/sda3), which does not exist
//   here: every one becomes a scratch file in the lab's directory (the mapping: a list in the
//   file's line order).
//   tgt-admin does NOT number LUNs in file order: it keeps a target's backing stores as Perl hash
//   keys and numbers them LUN 1, 2, … in their sorted (byte) order, merging equal paths (tgt
//   1.0.85, process_options: `foreach my $backing_store (sort keys %$value)`). So the lab's files
//   must sort as the storage server's paths do, or LUN n would be another disk in the lab than
//   on the storage server; such a mapping is refused, as are two equal paths.
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
  /** The lab's file for each `backing-store` line, in the file's line order (not LUN order: see the head comment). */
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
      hint: 'give one lab file for each backing-store line, in the order of the lines',
    });
  }
  const generatedStores = lines.flatMap((l) => BACKING_STORE.exec(stripCr(l))?.[2] ?? []);
  const lunOf = lunNumbers(generatedStores, mapping.backingFiles);
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
      const lab = mapping.backingFiles[luns.length]!;
      const lun = lunOf(generated);
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
  luns.sort((a, b) => a.lun - b.lun);
  return { text: out.join('\n'), changes, iqn: iqns[0]!, luns, acl: acl.length ? [...new Set(acl)] : ['ALL'] };
}

/** Perl's `sort` on byte strings: bytewise, as tgt-admin orders the backing stores. */
const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/**
 * The LUN tgt-admin gives each generated backing store (its rank in byte order), after checking
 * that the lab's files get the same LUNs in the lab's tgtd and that no two paths are equal.
 */
function lunNumbers(generated: readonly string[], lab: readonly string[]): (path: string) => number {
  for (const [what, list] of [['targets.conf', generated], ['the lab', lab]] as const) {
    const twice = list.find((p, i) => list.indexOf(p) !== i);
    if (twice !== undefined) throw new DomuError(`${what} names the backing store ${twice} twice: tgt-admin merges equal backing-store paths into one LUN`, { hint: 'give each LUN a file of its own' });
  }
  const rank = (list: readonly string[]) => new Map([...list].sort(byteOrder).map((p, i) => [p, i + 1]));
  const real = rank(generated);
  const inLab = rank(lab);
  if (generated.some((g, i) => real.get(g) !== inLab.get(lab[i]!))) {
    const order = (list: readonly string[]) => [...list].sort(byteOrder).join(', ');
    throw new DomuError(`the lab's backing files sort as ${order(lab)}, the storage server's as ${order(generated)}: tgt-admin numbers LUNs in the sorted order of the paths, so LUN numbers would differ between the lab and the storage server`, {
      hint: 'name the lab files so that they sort like the paths they stand for (e.g. lun1-…, lun2-…)',
    });
  }
  return (path) => real.get(path)!;
}

function stripCr(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}
