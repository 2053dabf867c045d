#!/usr/bin/env node
// Entry point for `npx domu`. The compiled CLI lives in build/ (built by `npm ci` through
// the prepare script, or `npm run build`).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../build/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  process.stderr.write('domu: the CLI is not built yet (build/cli/main.js missing). Run: npm ci   (or npm run build)\n');
  process.exit(2);
}
await import(main);
