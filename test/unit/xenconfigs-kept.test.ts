// Kept renders of the Xen configs (stages/xenconfigs-kept.ts): used only for the same
// description, boot names, options and templates; any change renders again.
import { cpSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashValue } from '../../src/core/hash.js';
import { loadDescription } from '../../src/model/description.js';
import { bootNames } from '../../src/pipeline/plan.js';
import { renderConfigs, TEMPLATE_DIR } from '../../src/stages/xenconfigs.js';
import { renderConfigsKept } from '../../src/stages/xenconfigs-kept.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
beforeAll(async () => {
  dir = await tempDir('domu-kept-');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const desc = (memory = 256) => loadDescription({ text: `guest:\n  memory: ${memory}\n` });
const boot = (d: ReturnType<typeof desc>) => bootNames(d, '6.1.0-56-amd64');
const memos = (cache: string) => readdirSync(join(cache, 'probes')).filter((n) => n.startsWith('xen-configs-'));

/** Replace the kept result with one that says `marker`: a call that returns it used the memo. */
function plant(cache: string, marker: string): void {
  const [name] = memos(cache);
  const file = join(cache, 'probes', name!);
  const kept = JSON.parse(readFileSync(file, 'utf8')) as { key: string; sum: string; result: { warnings: string[] } };
  kept.result.warnings = [marker];
  writeFileSync(file, JSON.stringify({ ...kept, sum: hashValue({ key: kept.key, result: kept.result }) }));
}

describe('renderConfigsKept', () => {
  it('gives what renderConfigs gives, and the kept render for the same inputs', () => {
    const cache = join(dir, 'same');
    const d = desc();
    const fresh = renderConfigsKept(cache, d, boot(d), {}, true);
    expect(fresh).toEqual(renderConfigs(d, boot(d)));
    plant(cache, 'from the memo');
    expect(renderConfigsKept(cache, d, boot(d), {}, true).warnings).toEqual(['from the memo']);
    expect(renderConfigsKept(cache, desc(), boot(desc()), {}, false).warnings).toEqual(['from the memo']);
  });

  it('renders again when the description, the boot names or the options change', () => {
    const cache = join(dir, 'changed');
    const d = desc();
    renderConfigsKept(cache, d, boot(d), {}, true);
    plant(cache, 'from the memo');
    const bigger = desc(512);
    const r = renderConfigsKept(cache, bigger, boot(bigger), {}, true);
    expect(r).toEqual(renderConfigs(bigger, boot(bigger)));
    expect(r.files.some((f) => /memory\s*=\s*512/.test(f.content))).toBe(true);
    expect(renderConfigsKept(cache, d, bootNames(d, '6.1.0-99-amd64'), {}, true).warnings).toEqual([]);
    expect(renderConfigsKept(cache, d, boot(d), { allowInconsistent: true }, true).warnings).toEqual([]);
  });

  it('renders again when a template changes', () => {
    const cache = join(dir, 'template');
    const templateDir = join(dir, 'templates');
    cpSync(TEMPLATE_DIR, templateDir, { recursive: true });
    const d = desc();
    renderConfigsKept(cache, d, boot(d), { templateDir }, true);
    plant(cache, 'from the memo');
    const file = join(templateDir, 'tgt-targets.conf.hbs');
    writeFileSync(file, `${readFileSync(file, 'utf8')}# edited\n`);
    // Rendered again (this process keeps its compiled templates by path, so the bytes are the
    // old template's here; a new process compiles the edited one).
    expect(renderConfigsKept(cache, d, boot(d), { templateDir }, true).warnings).toEqual([]);
    expect(memos(cache)).toHaveLength(2);
  });

  it('does not use a damaged memo, keeps nothing when asked not to, and never keeps a failure', () => {
    const cache = join(dir, 'damaged');
    const d = desc();
    renderConfigsKept(cache, d, boot(d), {}, true);
    const [name] = memos(cache);
    const file = join(cache, 'probes', name!);
    writeFileSync(file, readFileSync(file, 'utf8').replace('"warnings":[]', '"warnings":["tampered"]'));
    expect(renderConfigsKept(cache, d, boot(d), {}, true).warnings).toEqual([]);
    const other = join(dir, 'read-only-use');
    renderConfigsKept(other, d, boot(d), {}, false);
    expect(() => readdirSync(join(other, 'probes'))).toThrow();
    const bad = loadDescription({ text: 'kernel:\n  ship: false\n' }); // kernel.image auto: no path for the configs
    expect(() => renderConfigsKept(cache, bad, {}, {}, true)).toThrow(/kernel.ship is false/);
    expect(memos(cache)).toHaveLength(1);
  });
});
