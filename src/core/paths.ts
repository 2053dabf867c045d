// Where the project's own data files are, wherever the CLI runs from (src/ under tsx, build/ compiled).
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function findProjectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'busybox-config'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('domu: cannot find the project root (package.json beside busybox-config/)');
}

export const PROJECT_ROOT = findProjectRoot();
export const projectPath = (...parts: string[]): string => resolve(PROJECT_ROOT, ...parts);
