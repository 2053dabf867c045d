// The generated storage/targets.conf made into the lab's: the same file, with exactly the lines
// that cannot hold on one machine changed, each change marked in the file and said in words.
//
// - A backing store names the storage server's device (/dev/sda3), which does not exist here:
//   every one becomes a scratch file in the lab's directory (the mapping: a list in the file's
//   line order). It comes in two forms, and the LUN numbers come differently from each:
//   - `<backing-store PATH>` … `lun N` … `</backing-store>` (what domu writes for store.disk: lun):
//     LUN N, as the block says; only the opening line changes, the block's lines stay.
//   - `backing-store PATH` (store.disk: file): tgt-admin does NOT number these in file order: it
//     keeps a target's backing stores as Perl hash keys and numbers them LUN 1, 2, … in their
//     sorted (byte) order (tgt 1.0.85, process_options: `foreach my $backing_store (sort keys
//     %$value)`). So the lab's files must sort as the storage server's paths do, or LUN n would
//     be another disk in the lab than on the storage server; such a mapping is refused.
//   Refused too, as tgt-admin would not give each store the LUN the file means: two equal paths
//   (merged into one LUN), both forms in one target (Config::General rejects the file), a block
//   without its `lun` line, two blocks with the same LUN, a `lun` line outside a block.
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
  /** The lab's file for each backing store (line or block), in the file's line order (not LUN order: see the head comment). */
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
const BLOCK_OPEN = /^(\s*)<backing-store\s+([^>\s]+)\s*>\s*$/i;
const BLOCK_CLOSE = /^\s*<\/backing-store\s*>\s*$/i;
const LUN = OPTION('lun');
const INITIATOR_ADDRESS = OPTION('initiator-address');
/** Forms whose devices the lab cannot map to scratch files (a direct-store passes a SCSI device through). */
const UNSUPPORTED = /^\s*(<direct-store\b|direct-store\b)/i;

/** One backing store of the file: its line (the opening line of a block) and, in a block, its `lun`. */
interface Store {
  line: number;
  indent: string;
  generated: string;
  block: boolean;
  lun?: number | undefined;
}

export function labTargetsConf(text: string, mapping: LabTargetsMapping): LabTargets {
  const lines = text.split('\n');
  const iqns = lines.flatMap((l) => TARGET_OPEN.exec(stripCr(l))?.[1] ?? []);
  if (iqns.length === 0) throw new DomuError('targets.conf has no <target> block: nothing for the lab storage server to serve', { hint: 'give the generated storage/targets.conf (domu configs writes it)' });
  if (iqns.length > 1) throw new DomuError(`targets.conf has ${iqns.length} targets (${iqns.join(', ')}); the lab serves the one target domu generates`, { hint: 'give the generated storage/targets.conf' });
  const stores = backingStores(lines);
  if (stores.length !== mapping.backingFiles.length) {
    const n = stores.length;
    throw new DomuError(`targets.conf has ${n} backing-store line${n === 1 ? '' : 's'} but the lab was given ${mapping.backingFiles.length} backing file${mapping.backingFiles.length === 1 ? '' : 's'} for them`, {
      hint: 'give one lab file for each backing-store line, in the order of the lines',
    });
  }
  const lunOf = lunNumbers(stores, mapping.backingFiles);
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
    const s = stores.findIndex((x) => x.line === i);
    if (s >= 0) {
      const { indent, generated, block } = stores[s]!;
      const lab = mapping.backingFiles[s]!;
      const lun = lunOf[s]!;
      const [was, now] = block ? [`<backing-store ${generated}>`, `<backing-store ${lab}>`] : [`backing-store ${generated}`, `backing-store ${lab}`];
      luns.push({ lun, generated, lab });
      out.push(`${indent}${LAB_MARK} LUN ${lun} was "${was}": not on this machine, a scratch file instead${cr}`, `${indent}${now}${cr}`);
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

/** The backing stores in line order, plain lines and blocks (each with its one `lun` line). */
function backingStores(lines: readonly string[]): Store[] {
  const stores: Store[] = [];
  let block: Store | undefined;
  for (const [i, line] of lines.entries()) {
    const body = stripCr(line);
    const refuse = (why: string) => new DomuError(`targets.conf line ${i + 1} ("${body.trim()}"): ${why}`, { hint: 'give the generated storage/targets.conf' });
    if (UNSUPPORTED.test(body)) throw refuse('the lab knows only backing-store lines and <backing-store> blocks');
    const lun = LUN.exec(body);
    if (block) {
      if (BLOCK_CLOSE.test(body)) {
        if (block.lun === undefined) throw refuse(`the <backing-store ${block.generated}> block has no lun line: tgt-admin would pick its LUN number itself`);
        block = undefined;
      } else if (lun) {
        if (block.lun !== undefined) throw refuse(`a second lun line in the <backing-store ${block.generated}> block`);
        if (!/^[1-9]\d*$/.test(lun[2]!)) throw refuse('expected a LUN number from 1 up (LUN 0 is tgt\'s controller)');
        block.lun = Number(lun[2]);
      } else if (BLOCK_OPEN.test(body) || BACKING_STORE.test(body) || /^\s*<\/target\b/i.test(body)) {
        throw refuse(`the <backing-store ${block.generated}> block is not closed`);
      }
      continue;
    }
    const open = BLOCK_OPEN.exec(body);
    const plain = open ? undefined : BACKING_STORE.exec(body);
    if (open ?? plain) {
      const [, indent, generated] = (open ?? plain) as unknown as [string, string, string];
      stores.push({ line: i, indent, generated, block: open !== null });
      if (open) block = stores.at(-1);
      continue;
    }
    // A target-wide lun: tgt-admin gives that number to every backing store of the target.
    if (lun) throw refuse('a lun line outside a <backing-store> block');
  }
  if (block) throw new DomuError(`targets.conf: the <backing-store ${block.generated}> block is not closed`, { hint: 'give the generated storage/targets.conf' });
  return stores;
}

/** Perl's `sort` on byte strings: bytewise, as tgt-admin orders the backing stores. */
const byteOrder = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

/**
 * The LUN tgt-admin gives each backing store, in line order: a block's own `lun`; for plain lines
 * the path's rank in byte order, after checking that the lab's files get the same LUNs in the
 * lab's tgtd. Either way no two paths may be equal, and a file uses one form only.
 */
function lunNumbers(stores: readonly Store[], lab: readonly string[]): number[] {
  const generated = stores.map((s) => s.generated);
  for (const [what, list] of [['targets.conf', generated], ['the lab', lab]] as const) {
    const twice = list.find((p, i) => list.indexOf(p) !== i);
    if (twice !== undefined) throw new DomuError(`${what} names the backing store ${twice} twice: tgt-admin merges equal backing-store paths into one LUN`, { hint: 'give each LUN a file of its own' });
  }
  const blocks = stores.filter((s) => s.block);
  if (blocks.length > 0 && blocks.length < stores.length) {
    throw new DomuError('targets.conf has both backing-store lines and <backing-store> blocks in its target: tgt-admin\'s parser (Config::General) rejects that', { hint: 'give the generated storage/targets.conf' });
  }
  if (blocks.length > 0) {
    for (const [i, s] of blocks.entries()) {
      const other = blocks.findIndex((o) => o.lun === s.lun);
      if (other !== i) throw new DomuError(`targets.conf gives LUN ${s.lun} to both ${blocks[other]!.generated} and ${s.generated}: tgt-admin would leave one of them out`, { hint: 'give each backing store a LUN of its own' });
    }
    return blocks.map((s) => s.lun!);
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
  return generated.map((g) => real.get(g)!);
}

function stripCr(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}
