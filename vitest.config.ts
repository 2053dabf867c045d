import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 300_000,
    pool: 'forks',
    // build/ compiled from src/ before any file runs: tests start the CLI as users do.
    globalSetup: ['./test/helpers/global-setup.ts'],
    reporters: ['default', './test/helpers/plain-summary.ts', './test/faults/reliability-reporter.ts'],
  },
});
