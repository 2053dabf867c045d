// Remembered file hashes (core/filehashes.ts): a remembered sha256 is used only while the file
// keeps its identity; a rewritten or replaced file, a damaged record or a racy file is read again.
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FileHashes, fileHashSettings } from '../../src/core/filehashes.js';
import { hashValue, sha256 } from '../../src/core/hash.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
beforeAll(async () => {
  dir = await tempDir('domu-filehashes-');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});
beforeEach(() => {
  // Files made here are milliseconds old (ctime may equal the time of hashing): a negative margin trusts them at once.
  fileHashSettings.racyMs = -60_000;
});
afterEach(() => {
  fileHashSettings.racyMs = 2000;
});

/** A record that remembers `path` with a made-up hash: a lookup that returns it used the record. */
async function plant(record: string, path: string): Promise<string> {
  const hashes = new FileHashes(record);
  await hashes.sha256(path);
  await hashes.save();
  const r = JSON.parse(await readFile(record, 'utf8')) as { v: number; sum: string; entries: [string, { sha256: string }][] };
  const made = 'f'.repeat(64);
  r.entries[0]![1].sha256 = made;
  await writeFile(record, JSON.stringify({ ...r, sum: hashValue(r.entries) }));
  return made;
}

async function setup(name: string): Promise<{ file: string; record: string }> {
  const d = join(dir, name);
  await mkdir(d, { recursive: true });
  const file = join(d, 'vmlinuz');
  await writeFile(file, 'kernel 1');
  return { file, record: join(d, 'cache', 'probes', 'file-hashes.json') };
}

describe('FileHashes', () => {
  it('uses the remembered hash while the file is unchanged', async () => {
    const { file, record } = await setup('same');
    const planted = await plant(record, file);
    expect(await new FileHashes(record).sha256(file)).toBe(planted);
  });

  it('reads a file again when it was rewritten (same size) or replaced', async () => {
    const { file, record } = await setup('changed');
    await plant(record, file);
    await writeFile(file, 'kernel 2');
    expect(await new FileHashes(record).sha256(file)).toBe(sha256('kernel 2'));
    await plant(record, file);
    await writeFile(`${file}.new`, 'kernel 3');
    await rename(`${file}.new`, file);
    expect(await new FileHashes(record).sha256(file)).toBe(sha256('kernel 3'));
  });

  it('does not use a damaged record', async () => {
    const { file, record } = await setup('damaged');
    await plant(record, file);
    await writeFile(record, (await readFile(record, 'utf8')).replace('"sum":"', '"sum":"0'));
    expect(await new FileHashes(record).sha256(file)).toBe(sha256('kernel 1'));
    await writeFile(record, 'garbage');
    expect(await new FileHashes(record).sha256(file)).toBe(sha256('kernel 1'));
  });

  it('keeps no racy file, and saves nothing into an unwritable place', async () => {
    const { file, record } = await setup('racy');
    fileHashSettings.racyMs = 60_000;
    const h = new FileHashes(record);
    expect(await h.sha256(file)).toBe(sha256('kernel 1'));
    await h.save();
    await expect(readFile(record, 'utf8')).rejects.toThrow();
    fileHashSettings.racyMs = -60_000;
    const bad = new FileHashes(join(file, 'not-a-dir', 'file-hashes.json'));
    expect(await bad.sha256(file)).toBe(sha256('kernel 1'));
    await bad.save();
  });
});
