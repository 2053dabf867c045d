// The rootfs-skel/ overlay of the rootfs stage (rootfs.ts): its entries in creation order, modes
// normalised, `*.hbs` templates rendered with handlebars (strict: a missing value is an error).
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { errorMessage, InputError } from '../core/errors.js';
import { compare, kindOf } from './rootfs-tree.js';

// handlebars is loaded when a skel is read (not in a no-op build, whose image is up to date).
const handlebars = () => createRequire(import.meta.url)('handlebars') as typeof import('handlebars');

/** Template files of the skel: rendered with handlebars, written without this suffix. */
export const TEMPLATE_SUFFIX = '.hbs';

export type SkelEntry =
  | { rel: string; kind: 'dir'; mode: number }
  | { rel: string; kind: 'file'; mode: number; src: string }
  | { rel: string; kind: 'rendered'; mode: number; text: string; template: string }
  | { rel: string; kind: 'symlink'; target: string };

/**
 * Modes of skel entries: kept, except that group and other write are dropped unless the sticky
 * bit is set (a checkout under umask 002 must give the same tree as one under umask 022; a
 * world-writable sticky directory like tmp/ is meant as such).
 */
export function skelMode(mode: number): number {
  const m = mode & 0o7777;
  return m & 0o1000 ? m : m & ~0o022;
}

/** Read the skel: its entries in creation order (parents first), templates rendered. */
export async function scanSkel(skel: string, data: { guest: Record<string, unknown> }): Promise<SkelEntry[]> {
  const out: SkelEntry[] = [];
  const targets = new Map<string, string>(); // staged path -> skel path that produces it
  const hb = handlebars().create();
  const claim = (rel: string, from: string) => {
    const other = targets.get(rel);
    if (other !== undefined) throw new InputError(`skel ${join(skel, from)}: ${rel} is also produced by ${join(skel, other)}`);
    targets.set(rel, from);
  };
  const walk = async (rel: string): Promise<void> => {
    const names = (await readdir(rel ? join(skel, rel) : skel)).sort(compare);
    for (const name of names) {
      const path = rel ? `${rel}/${name}` : name;
      const abs = join(skel, path);
      const st = await lstat(abs);
      if (st.isDirectory()) {
        claim(path, path);
        out.push({ rel: path, kind: 'dir', mode: skelMode(st.mode) });
        await walk(path);
      } else if (st.isSymbolicLink()) {
        claim(path, path);
        out.push({ rel: path, kind: 'symlink', target: await readlink(abs) });
      } else if (st.isFile() && name.endsWith(TEMPLATE_SUFFIX)) {
        if (name === TEMPLATE_SUFFIX) throw new InputError(`skel ${abs}: a template needs a name before ${TEMPLATE_SUFFIX}`);
        const dest = path.slice(0, -TEMPLATE_SUFFIX.length);
        claim(dest, path);
        let text: string;
        try {
          const template = hb.compile(await readFile(abs, 'utf8'), { strict: true, noEscape: true });
          text = template(data);
        } catch (e) {
          throw new InputError(`skel ${abs}: template error: ${templateError(errorMessage(e))}`, `templates see ${Object.keys(data.guest).map((k) => `guest.${k}`).join(', ')}`);
        }
        out.push({ rel: dest, kind: 'rendered', mode: skelMode(st.mode), text, template: path });
      } else if (st.isFile()) {
        claim(path, path);
        out.push({ rel: path, kind: 'file', mode: skelMode(st.mode), src: abs });
      } else {
        throw new InputError(`skel ${abs}: ${kindOf(st)}: only regular files, directories and symlinks can be laid over the root`);
      }
    }
  };
  await walk('');
  return out;
}

/** Handlebars' messages, readable: `"nme" not defined in [object Object] - 1:2` → `line 1, column 2: no value for "nme"`. */
function templateError(msg: string): string {
  const m = /^"(.*)" not defined in .* - (\d+):(\d+)$/s.exec(msg);
  if (m) return `line ${m[2]}, column ${m[3]}: no value for "${m[1]}" (a missing value is an error)`;
  return msg.replace(/\s+/g, ' ').trim();
}
