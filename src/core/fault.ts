// Fault injection points for the reliability suite (test/faults/). With DOMU_FAULT_PAUSE=<point>
// (e.g. `stage:image`, `image:mounted`, `cache:before-rename`, `publish:copying`), a run that
// reaches that point prints one line `domu: fault point <point> reached (pid N)` on stderr and
// then waits, holding whatever it has set up, until it is stopped or resumed: SIGINT/SIGTERM
// abort it as usual (and it cleans up), SIGKILL ends it on the spot (and the next run's journal
// recovery cleans up), SIGUSR2 lets it go on. Without the variable a point costs one string compare.
import { setTimeout as sleep } from 'node:timers/promises';
import { abortError } from './errors.js';

const PAUSE = process.env.DOMU_FAULT_PAUSE;
/** A paused run gives up after this long, so a forgotten test cannot hang a machine forever. */
const MAX_PAUSE_MS = 10 * 60_000;

export async function faultPoint(point: string, signal?: AbortSignal): Promise<void> {
  if (PAUSE === undefined || PAUSE !== point) return;
  // SIGUSR2 ends the pause and the run goes on (a test changes the world meanwhile, e.g. fills
  // the disk). The listener is in place before the line is printed: SIGUSR2 kills by default.
  const resumed = new AbortController();
  const onResume = () => resumed.abort();
  process.once('SIGUSR2', onResume);
  process.stderr.write(`domu: fault point ${point} reached (pid ${process.pid})\n`);
  try {
    await sleep(MAX_PAUSE_MS, undefined, { signal: signal ? AbortSignal.any([signal, resumed.signal]) : resumed.signal });
  } catch {
    /* aborted or resumed */
  } finally {
    process.off('SIGUSR2', onResume);
  }
  if (signal?.aborted) throw abortError(signal);
}
