// A real StageContext for tests: real cache in a temp dir, real cleanup registry, memory logger.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cache } from '../../src/core/cache.js';
import { CleanupRegistry } from '../../src/core/cleanup.js';
import type { StageContext } from '../../src/core/context.js';
import { memoryLogger } from '../../src/core/log.js';

export interface TestContext extends StageContext {
  lines: string[];
  controller: AbortController;
  root: string;
  dispose(): Promise<void>;
}

export async function makeTestContext(opts: { cacheDir?: string } = {}): Promise<TestContext> {
  const root = await mkdtemp(join(tmpdir(), 'domu-test-'));
  const log = memoryLogger();
  const controller = new AbortController();
  const progress: string[] = [];
  return {
    root,
    workDir: join(root, 'work'),
    log,
    lines: log.lines,
    signal: controller.signal,
    controller,
    cleanup: new CleanupRegistry(),
    cache: new Cache(opts.cacheDir ?? join(root, 'cache')),
    progress: (t) => progress.push(t),
    dispose: () => rm(root, { recursive: true, force: true }),
  };
}

export async function tempDir(prefix = 'domu-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

/** A StageContext on a given cache directory, for test helpers that fill a shared cache. */
export function sharedStageContext(cacheDir: string, cleanup: CleanupRegistry): StageContext {
  return {
    workDir: join(cacheDir, 'work'),
    log: memoryLogger(),
    signal: new AbortController().signal,
    cleanup,
    cache: new Cache(cacheDir),
    progress: () => {},
  };
}

/** A small deterministic PRNG (mulberry32), so that samples are the same on every run. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
