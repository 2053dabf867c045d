// The Xen configs rendered before, kept in the cache: rendering is pure (xenconfigs.ts: nothing is
// read but the templates), so the same description, boot names and options through the same
// templates and the same rendering code give the same files and warnings. The key holds all of
// these: the whole description, the options, the content of every file in the template directory,
// and the content of the code that renders (this stage, its quoting and header modules, DOMU_VERSION)
// and handlebars' version. A kept render spares loading handlebars and compiling the templates.
// A render that fails is never kept (the same inputs fail again, with the same message). The
// memo carries a checksum: a damaged one is not used. Best effort: without it, render as before.
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { tempPathFor } from '../core/atomic.js';
import { hashValue, sha256 } from '../core/hash.js';
import { DOMU_VERSION } from '../core/version.js';
import type { Description } from '../model/schema.js';
import { renderConfigs, TEMPLATE_DIR, type BootFiles, type RenderOptions, type RenderResult } from './xenconfigs.js';

const MEMO_VERSION = 1;
/** Kept renders beyond this many (the oldest first) are removed when one is added. */
const KEEP = 32;
const PREFIX = 'xen-configs-';

/** The modules whose code decides the rendered bytes (as built: .js, or .ts under the tests). */
const CODE = ['./xenconfigs', '../xen/xencfg', '../xen/lun', '../store/genheader', '../core/version', './xenconfigs-kept'];

function codeDigest(): string[] {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  const code = CODE.map((m) => sha256(readFileSync(fileURLToPath(new URL(`${m}${ext}`, import.meta.url)))));
  const hb = (createRequire(import.meta.url)('handlebars/package.json') as { version: string }).version;
  return [...code, `handlebars ${hb}`, `domu ${DOMU_VERSION}`];
}

function renderKey(desc: Description, boot: BootFiles, opts: RenderOptions): string {
  const dir = opts.templateDir ?? TEMPLATE_DIR;
  const templates = readdirSync(dir)
    .sort()
    .map((n) => [n, statSync(join(dir, n)).isFile() ? sha256(readFileSync(join(dir, n))) : 'not a file']);
  return hashValue({ v: MEMO_VERSION, desc, boot, allowInconsistent: opts.allowInconsistent ?? false, dir, templates, code: codeDigest() });
}

interface Kept {
  key: string;
  sum: string;
  result: RenderResult;
}

const sumOf = (key: string, result: RenderResult) => hashValue({ key, result });

/**
 * renderConfigs' result, from the memo in `cacheDir/probes/` when the same inputs were rendered
 * before. `keep`: store a fresh render there (a run does; the plan-time check only reads, so
 * that a plan refused later leaves nothing in the cache). No cacheDir: render.
 */
export function renderConfigsKept(cacheDir: string | undefined, desc: Description, boot: BootFiles, opts: RenderOptions, keep: boolean): RenderResult {
  if (cacheDir === undefined) return renderConfigs(desc, boot, opts);
  let key: string;
  try {
    key = renderKey(desc, boot, opts);
  } catch {
    return renderConfigs(desc, boot, opts); // an unreadable template: renderConfigs says which
  }
  const dir = join(cacheDir, 'probes');
  const file = join(dir, `${PREFIX}${key.slice(0, 32)}.json`);
  try {
    const kept = JSON.parse(readFileSync(file, 'utf8')) as Kept;
    if (kept.key === key && kept.sum === sumOf(key, kept.result)) return kept.result;
  } catch {
    // none yet, or unreadable or damaged: render
  }
  const result = renderConfigs(desc, boot, opts);
  if (keep) store(dir, file, { key, sum: sumOf(key, result), result });
  return result;
}

function store(dir: string, file: string, kept: Kept): void {
  try {
    mkdirSync(dir, { recursive: true });
    const tmp = tempPathFor(file);
    try {
      writeFileSync(tmp, JSON.stringify(kept));
      renameSync(tmp, file);
    } finally {
      rmSync(tmp, { force: true });
    }
    const old = readdirSync(dir)
      .filter((n) => n.startsWith(PREFIX) && n.endsWith('.json'))
      .map((n) => ({ n, t: statSync(join(dir, n)).mtimeMs }))
      .sort((a, b) => b.t - a.t)
      .slice(KEEP);
    for (const o of old) rmSync(join(dir, o.n), { force: true });
  } catch {
    // a full or read-only cache: the next run renders again
  }
}
