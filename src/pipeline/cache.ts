// Content-addressed cache under $XDG_CACHE_HOME/domu (or --cache-dir).
// An entry is a directory `<root>/<kind>/<key>/`; it is produced in a temporary directory
// beside it and renamed into place when complete, so a crash never leaves a half entry that a
// later run would trust. Two producers of the same key race harmlessly: the first rename wins.
import { mkdir, rm, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { renameDirInto, sweepTemps, tempPathFor } from '../lib/atomic.js';
import { faultPoint } from '../lib/fault.js';

export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  return join(xdg && xdg.startsWith('/') ? xdg : join(homedir(), '.cache'), 'domu');
}

const KEY_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export class Cache {
  /** `signal`: the run's abort signal (only the fault injection point waits on it). */
  constructor(readonly root: string, private readonly signal?: AbortSignal) {}

  entryPath(kind: string, key: string): string {
    if (!KEY_RE.test(kind) || !KEY_RE.test(key)) throw new Error(`bad cache address ${kind}/${key}`);
    return join(this.root, kind, key);
  }

  /** The entry's directory if it exists (and is therefore complete), else undefined. */
  async lookup(kind: string, key: string): Promise<string | undefined> {
    const p = this.entryPath(kind, key);
    try {
      return (await stat(p)).isDirectory() ? p : undefined;
    } catch {
      return undefined;
    }
  }

  /**
   * Produce an entry: `produce` fills a fresh temporary directory; on success it is renamed
   * into place. On failure the temporary directory is removed and the error rethrown.
   * `onTemp` lets the caller register the temporary directory with its cleanup registry.
   */
  async store(kind: string, key: string, produce: (dir: string) => Promise<void>, onTemp?: (dir: string) => () => void): Promise<string> {
    const target = this.entryPath(kind, key);
    await mkdir(join(this.root, kind), { recursive: true });
    const tmp = tempPathFor(target);
    await mkdir(tmp);
    const release = onTemp?.(tmp);
    try {
      await produce(tmp);
      await faultPoint(`cache:${kind}`, this.signal);
      await renameDirInto(tmp, target);
      return target;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    } finally {
      release?.();
    }
  }

  async remove(kind: string, key: string): Promise<void> {
    await rm(this.entryPath(kind, key), { recursive: true, force: true });
  }

  /** Remove temporaries left by crashed runs. */
  async sweep(kind: string): Promise<void> {
    await sweepTemps(join(this.root, kind));
  }
}
