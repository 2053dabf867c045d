// The cleanup registry: every mount, loop device, temp file and child a stage creates is
// registered here and undone innermost-first (LIFO) on failure, SIGINT or SIGTERM.
import { rm } from 'node:fs/promises';
import { errorMessage } from './errors.js';
import type { Logger } from './log.js';
import { activeJournal, type JournalResource } from './journal.js';

export interface CleanupEntry {
  label: string;
  undo: () => Promise<void> | void;
}

export class CleanupRegistry {
  private readonly entries: CleanupEntry[] = [];

  /** Register an undo action; the returned function drops it (the resource was kept or released normally). */
  push(label: string, undo: () => Promise<void> | void, resource?: JournalResource): () => void {
    if (resource) activeJournal()?.record(resource);
    const entry = { label, undo };
    this.entries.push(entry);
    return () => {
      const i = this.entries.lastIndexOf(entry);
      if (i >= 0) this.entries.splice(i, 1);
    };
  }

  /** Register a path that is removed (recursively) unless released. */
  tempPath(path: string): () => void {
    return this.push(`remove ${path}`, () => rm(path, { recursive: true, force: true }), { kind: 'path', path });
  }

  get size(): number {
    return this.entries.length;
  }

  get labels(): string[] {
    return this.entries.map((e) => e.label);
  }

  /** Undo everything registered, newest first. Failures are logged and do not stop the rest. */
  async runAll(log?: Logger): Promise<string[]> {
    const failures: string[] = [];
    while (this.entries.length) {
      const e = this.entries.pop()!;
      try {
        log?.debug(`cleanup: ${e.label}`);
        await e.undo();
      } catch (err) {
        const msg = `cleanup failed: ${e.label}: ${errorMessage(err)}`;
        failures.push(msg);
        log?.warn(msg);
      }
    }
    return failures;
  }
}
