// The real Debian kernel (linux-image-amd64 → linux-image-6.1.0-NN-amd64), fetched through
// fetchKernelPackage into the cache shared by the test files of one machine, so that the
// ~70 MB package is downloaded once per machine (and apt runs at most once a day).
import { CleanupRegistry } from '../../src/pipeline/cleanup.js';
import { fetchKernelPackage, type KernelPackage } from '../../src/lib/kernel.js';
import { TEST_CACHE_DIR } from './busybox-tarball.js';
import { sharedStageContext } from './context.js';

export const TEST_KERNEL_PACKAGE = 'linux-image-amd64';

let pending: Promise<KernelPackage> | undefined;

export function getKernelPackage(): Promise<KernelPackage> {
  pending ??= (async () => {
    const cleanup = new CleanupRegistry();
    try {
      return await fetchKernelPackage(sharedStageContext(TEST_CACHE_DIR, cleanup), { package: TEST_KERNEL_PACKAGE });
    } finally {
      await cleanup.runAll();
    }
  })();
  pending.catch(() => {
    pending = undefined;
  });
  return pending;
}
