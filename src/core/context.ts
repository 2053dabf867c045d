// What a stage gets to work with (design.md, "Stage contract"). No listr2 and no CLI here.
import type { Cache } from './cache.js';
import type { CleanupRegistry } from './cleanup.js';
import type { ExecEnv } from './exec.js';
import type { Logger } from './log.js';

export interface StageContext extends ExecEnv {
  /** The run's work directory (build logs, scratch space); kept after the run. */
  workDir: string;
  log: Logger;
  signal: AbortSignal;
  cleanup: CleanupRegistry;
  cache: Cache;
  /** Report progress within the stage (e.g. "12.3 MiB / 20 MiB"); shown on the task line. */
  progress(text: string): void;
}
