#!/usr/bin/env node
// Entry point for `npx domu`. The compiled CLI lives in build/ (made by `npm ci` through the
// prepare script, by `npm run build`, and by `make image` / `make test`).
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../build/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  process.stderr.write('domu: the CLI is not built yet (build/cli/main.js missing). Run: npm ci   (or npm run build)\n');
  process.exit(2);
}
// `domu --version` alone: package.json's version, as commander prints it, without loading the CLI
// (the version comes from package.json either way, so a stale build/ does not matter here).
const args = process.argv.slice(2);
if (args.length === 1 && (args[0] === '--version' || args[0] === '-V')) {
  process.stdout.write(`${JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version}\n`);
} else {
  // A checkout updated without rebuilding would run old code: say so (a few ms of stat calls).
  const src = fileURLToPath(new URL('../src', import.meta.url));
  const built = statSync(main).mtimeMs;
  const newer = (dir) => readdirSync(dir, { withFileTypes: true }).some((e) => (e.isDirectory() ? newer(join(dir, e.name)) : statSync(join(dir, e.name)).mtimeMs > built));
  if (existsSync(src) && newer(src)) process.stderr.write('domu: warning: src/ is newer than build/; run `npm run build` to use the current code\n');
  await import(main);
}
