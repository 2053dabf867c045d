// Assertions on the errors users see.
import { expect } from 'vitest';
import { InputError } from '../../src/core/errors.js';

/** The InputError (exit 2) thrown by fn (fails the test if nothing is thrown). */
export function inputError(fn: () => unknown): InputError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(InputError);
    expect((e as InputError).exitCode).toBe(2);
    return e as InputError;
  }
  throw new Error('expected an InputError');
}
