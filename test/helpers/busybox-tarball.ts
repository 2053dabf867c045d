// The real busybox 1.35.0 release tarball, obtained through the real source stage (Debian's
// source archive; upstream is not reachable from these machines) into a cache shared by the
// test files of one machine, so that it is downloaded once.
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import { sourceStage } from '../../src/stages/source.js';
import { sharedStageContext } from './context.js';

export const TEST_CACHE_DIR = process.env.DOMU_TEST_CACHE ?? join(tmpdir(), 'domu-test-cache');
export const BUSYBOX_1_35_SHA256 = 'faeeb244c35a348a334f4a59e44626ee870fb07b6884d68c10ae8bc19f83a694';

let pending: Promise<string> | undefined;

export function getBusyboxTarball(): Promise<string> {
  pending ??= (async () => {
    const cleanup = new CleanupRegistry();
    try {
      const out = await sourceStage(
        { version: '1.35.0', mirrors: [], fallback: 'distro', strictVersion: true },
        sharedStageContext(TEST_CACHE_DIR, cleanup),
      );
      return out.tarball;
    } finally {
      await cleanup.runAll();
    }
  })();
  return pending;
}
