// The real Debian kernel (linux-image-amd64 → linux-image-6.1.0-NN-amd64), fetched through
// fetchKernelPackage into the cache shared by the test files of one machine, so that the
// ~70 MB package is downloaded once per machine (and apt runs at most once a day). Its headers
// (linux-headers-<release> with -common and linux-kbuild, ~15 MB) likewise, for kbuild tests.
import { CleanupRegistry } from '../../src/core/cleanup.js';
import { fetchKernelHeaders, type KernelHeaders } from '../../src/kernel/kbuild.js';
import { fetchKernelPackage, type KernelPackage } from '../../src/kernel/kernel.js';
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

let pendingHeaders: Promise<KernelHeaders> | undefined;

/** The headers of getKernelPackage()'s kernel, in the shared test cache. */
export function getKernelHeaders(): Promise<KernelHeaders> {
  pendingHeaders ??= (async () => {
    const { release } = await getKernelPackage();
    const cleanup = new CleanupRegistry();
    try {
      return await fetchKernelHeaders(sharedStageContext(TEST_CACHE_DIR, cleanup), { release });
    } finally {
      await cleanup.runAll();
    }
  })();
  pendingHeaders.catch(() => {
    pendingHeaders = undefined;
  });
  return pendingHeaders;
}
