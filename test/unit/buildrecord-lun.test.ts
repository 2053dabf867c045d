// build.json after a publish onto the LUN (store.disk lun): lunPublish is added to the record,
// and it is a fact about the store, not the build: the build hash (which names a release, and
// which `domu release` checks) stays what it was.
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { BUILD_RECORD, BUILD_RECORD_VERSION, buildHashOf, readBuildRecord, recordLunPublish, type BuildRecord } from '../../src/model/buildrecord.js';
import { tempDir } from '../helpers/context.js';

let dir: string;
beforeAll(async () => {
  dir = await tempDir('domu-record-lun-');
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

it('recordLunPublish adds the device and bytes; the build hash does not change', async () => {
  const body = { version: BUILD_RECORD_VERSION, busybox: { provider: 'cache', resolvedVersion: '1.35.0' }, disk: { store: 'lun', target: '/dev/x' } } as unknown as Omit<BuildRecord, 'buildHash' | 'imageFile' | 'ramdiskFile'>;
  const buildHash = buildHashOf(body);
  await writeFile(join(dir, BUILD_RECORD), JSON.stringify({ ...body, imageFile: { ino: 1, mtimeMs: 2, size: 3 }, ramdiskFile: null, buildHash }));
  const lun = { device: '/dev/loop3', bytesWritten: 2097152, bytesChecked: 67108864, sha256: 'ab'.repeat(32) };
  await recordLunPublish(dir, { ...lun, kind: 'block device' } as typeof lun);
  const r = (await readBuildRecord(dir))!;
  expect(r.lunPublish).toEqual(lun);
  const { buildHash: kept, imageFile: _i, ramdiskFile: _r, ...rest } = r;
  expect(kept).toBe(buildHash);
  expect(buildHashOf(rest)).toBe(buildHash);
  expect(buildHashOf({ ...body, disk: { store: 'file', target: '/scsistore/busybox.img' } })).not.toBe(buildHash);
  expect(JSON.parse(await readFile(join(dir, BUILD_RECORD), 'utf8')).disk).toEqual({ store: 'lun', target: '/dev/x' });
});
