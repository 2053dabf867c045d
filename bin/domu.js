#!/usr/bin/env node
// Entry point for `npx domu`. The compiled CLI lives in build/ (made by `npm ci` through the
// prepare script, by `npm run build`, and by `make image` / `make test`).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../build/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  process.stderr.write('domu: the CLI is not built yet (build/cli/main.js missing). Run: npm ci   (or npm run build)\n');
  process.exit(2);
}
// A checkout updated without rebuilding would run old code: say so (a few ms of stat calls).
const src = fileURLToPath(new URL('../src', import.meta.url));
const built = statSync(main).mtimeMs;
const newer = (dir) => readdirSync(dir, { withFileTypes: true }).some((e) => (e.isDirectory() ? newer(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs > built));
if (existsSync(src) && newer(src)) process.stderr.write('domu: warning: src/ is newer than build/; run `npm run build` to use the current code\n');
await import(main);
