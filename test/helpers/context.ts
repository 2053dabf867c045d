// A real StageContext for tests: real cache in a temp dir, real cleanup registry, memory logger.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Cache } from '../../src/pipeline/cache.js';
import { CleanupRegistry } from '../../src/pipeline/cleanup.js';
import type { StageContext } from '../../src/pipeline/context.js';
import { memoryLogger } from '../../src/lib/log.js';

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
