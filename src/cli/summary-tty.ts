// The summary of a complete build as a person reads it on a terminal: one aligned table of the
// artifacts (paths relative to --out, short hashes) and one line per fact, within 100 columns.
// The plain summary (not a terminal) and --json keep every path and full hash; so does build.json.
import { relative } from 'node:path';
import { count } from '../core/plural.js';
import type { Summary } from './summary.js';

export const TTY_COLUMNS = 100;
const SHORT_HASH = 12;
const LABEL = 11; // "published" and two spaces

const size = (n: number) => (n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

/** `text` cut in the middle to `width` characters ("boot/initrd-…-busybox.gz"). */
function fit(text: string, width: number): string {
  if (text.length <= width) return text;
  const head = Math.ceil((width - 1) / 2);
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`;
}

/** `label` then `text`, wrapped at word boundaries under the text (never cutting a word). */
function labelled(label: string, text: string, width: number): string[] {
  const indent = ' '.repeat(LABEL);
  const lines: string[] = [];
  let line = label.padEnd(LABEL);
  let empty = true;
  for (const word of text.split(' ')) {
    if (!empty && line.length + 1 + word.length > width) {
      lines.push(line);
      line = indent;
      empty = true;
    }
    line += empty ? word : ` ${word}`;
    empty = false;
  }
  lines.push(line);
  return lines;
}

/** The build summary for a terminal (formatSummary's, reorganised; see the file comment). */
export function formatBuildTty(sum: Summary, width = TTY_COLUMNS): string {
  const artifacts = sum.artifacts!;
  const out = sum.image ? String((sum.image as { path: string }).path).replace(/\/[^/]*$/, '') : '';
  const lines: string[] = [sum.upToDate ? 'up to date: every stage hit the cache; nothing in the output was rewritten' : 'built:'];
  const shown = artifacts.filter((_, i) => i < 3 || artifacts.length <= 15);
  const rows = shown.map((a) => [out ? relative(out, a.path) : a.path, size(a.apparentBytes), size(a.allocatedBytes), a.sha256.slice(0, SHORT_HASH)] as const);
  const header = ['file', 'apparent', 'allocated', 'sha256'] as const;
  const w2 = Math.max(header[1].length, ...rows.map((r) => r[1].length));
  const w3 = Math.max(header[2].length, ...rows.map((r) => r[2].length));
  const room = width - 2 - (2 + w2) - (2 + w3) - (2 + SHORT_HASH);
  const w1 = Math.min(room, Math.max(header[0].length, ...rows.map((r) => r[0].length)));
  const row = (r: readonly [string, string, string, string]) => `  ${fit(r[0], w1).padEnd(w1)}  ${r[1].padStart(w2)}  ${r[2].padStart(w3)}  ${r[3]}`.trimEnd();
  lines.push(...labelled('output', out || '(none)', width));
  lines.push(row(header));
  for (const r of rows) lines.push(row(r));
  if (shown.length < artifacts.length) lines.push(`  … and ${count(artifacts.length - shown.length, 'more config file', 'more config files')} (all listed in --json)`);

  const b = sum.busybox as { resolvedVersion?: string; provider?: string; origin?: string; substitution?: unknown } | undefined;
  if (b?.resolvedVersion) lines.push(...labelled('busybox', `${b.resolvedVersion} (${b.provider}: ${b.origin})`, width));
  if (sum.modules) {
    const names = sum.modules.modules.map((m) => m.name);
    const list = names.length ? `: ${names.join(' ')}` : '';
    lines.push(...labelled('modules', `${count(names.length, 'module')} for ${sum.modules.release}${list}`, width));
  }
  // The busybox substitution is also the source stage's warning: said once, as the warning.
  const warned = sum.warnings.some((w) => w.stage === 'source');
  for (const t of sum.substitutions ?? []) if (!(warned && b?.substitution && t.startsWith('busybox '))) lines.push(...labelled('note', t, width));
  if (sum.published) {
    const p = sum.published;
    const onto = p.lun ? `; image onto the LUN ${p.lun.device}: ${p.lun.bytesWritten} bytes written, ${p.lun.bytesChecked} checked` : '';
    const text = `${p.store}: ${p.written.length} written, ${p.unchanged.length} unchanged${p.backups.length ? `, ${p.backups.length} .bak kept` : ''}${p.previousImage ? `; previous image kept as ${p.previousImage}` : ''}${onto}`;
    lines.push(...labelled('published', text, width));
  }
  for (const w of sum.warnings) lines.push(...labelled('warning', `${w.stage ? `${w.stage}: ` : ''}${w.message}`, width));
  if (sum.log) lines.push(...labelled('log', sum.log, width));
  return lines.join('\n');
}
