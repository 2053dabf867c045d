// The table of known busybox releases, read from busybox-config/releases.hash.
import { readFileSync } from 'node:fs';
import { SHA256_RE } from '../core/hash.js';
import { projectPath } from '../core/paths.js';

export const RELEASES_FILE = projectPath('busybox-config', 'releases.hash');

export interface KnownRelease {
  version: string;
  sha256: string;
  file: string;
}

export function parseReleases(text: string, source = RELEASES_FILE): Map<string, KnownRelease> {
  const table = new Map<string, KnownRelease>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const [algo, hash, file, ...rest] = line.split(/\s+/);
    const m = /^busybox-(\d+\.\d+\.\d+)\.tar\.bz2$/.exec(file ?? '');
    if (algo !== 'sha256' || !hash || !SHA256_RE.test(hash) || !m || rest.length) {
      throw new Error(`${source}:${i + 1}: expected "sha256 <64 hex digits> busybox-<version>.tar.bz2"`);
    }
    table.set(m[1]!, { version: m[1]!, sha256: hash, file: file! });
  });
  return table;
}

let cached: Map<string, KnownRelease> | undefined;
export function knownReleases(): Map<string, KnownRelease> {
  cached ??= parseReleases(readFileSync(RELEASES_FILE, 'utf8'));
  return cached;
}

/** Compare dotted versions numerically: -1, 0, 1. */
export function compareVersions(a: string, b: string): number {
  const pa = a.split('.').map(Number);
  const pb = b.split('.').map(Number);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const d = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (d) return d < 0 ? -1 : 1;
  }
  return 0;
}

export const tarballName = (version: string): string => `busybox-${version}.tar.bz2`;
