// The build summary on a terminal (issue 14): an aligned table within 100 columns, short hashes,
// each fact once, plurals right. The plain and --json summaries are checked by the CLI tests.
import { describe, expect, it } from 'vitest';
import { formatBuildTty } from '../../src/cli/summary-tty.js';
import type { Summary } from '../../src/cli/summary.js';

const out = '/home/someone/projects/a-rather-long-directory-name/for-the-guest-builds/out';
const hash = (i: number) => `${i}`.repeat(64).slice(0, 64);
const files = ['busybox.img', 'boot/vmlinuz-6.1.0-57-amd64', 'boot/initrd-6.1.0-57-amd64-busybox.gz', 'xen/dom0-with-a-very-long-host-name-indeed-and-then-some-0001/busybox.cfg', 'storage/targets.conf'];

function summary(over: Partial<Summary> = {}): Summary {
  return {
    ok: true,
    command: 'build',
    exitCode: 0,
    stages: [],
    warnings: [{ stage: 'source', message: 'busybox 1.22.1 was requested but 1.35.0 is used instead: 1.22.1 does not build with this glibc; source: upstream' }],
    versions: {},
    busybox: { resolvedVersion: '1.35.0', provider: 'cache', origin: 'upstream', substitution: { requested: '1.22.1', used: '1.35.0' } },
    image: { path: `${out}/busybox.img` },
    modules: { release: '6.1.0-57-amd64', requests: [], modules: [{ name: 'xen_netfront' } as NonNullable<Summary['modules']>['modules'][number]], builtin: [], warnings: [], index: 'cached' },
    artifacts: files.map((f, i) => ({ path: `${out}/${f}`, apparentBytes: i === 0 ? 1073741824 : 930 + i, allocatedBytes: 4096, sha256: hash(i) })),
    upToDate: true,
    substitutions: ['busybox 1.35.0 was built instead of the requested 1.22.1: 1.22.1 does not build with this glibc (from upstream)'],
    log: '/home/someone/.cache/domu/runs/2026-12-06T11-39-29-680Z-build-19383/run.log',
    ...over,
  };
}

describe('formatBuildTty', () => {
  it('fits 100 columns, with paths relative to --out and 12-digit hashes', () => {
    const text = formatBuildTty(summary());
    for (const line of text.split('\n')) expect(line.length, line).toBeLessThanOrEqual(100);
    expect(text).toContain(`output     ${out}`);
    expect(text).toMatch(/^ {2}busybox\.img +1024\.0 MiB +4\.0 KiB {2}000000000000$/m);
    expect(text).not.toMatch(/[0-9a-f]{13}/);
    expect(text).toMatch(/xen\/dom0-with-a-very.*….*busybox\.cfg/);
  });

  it('says the busybox substitution once, and counts in the right number', () => {
    const text = formatBuildTty(summary());
    expect(text.match(/1\.22\.1/g)).toHaveLength(2); // the one warning line names it twice
    expect(text).toContain('warning    source: busybox 1.22.1 was requested');
    expect(text).not.toContain('note');
    expect(text).toContain('modules    1 module for 6.1.0-57-amd64: xen_netfront');
  });

  it('keeps a note that no warning says', () => {
    const text = formatBuildTty(summary({ warnings: [] }));
    expect(text).toContain('note       busybox 1.35.0 was built instead of the requested 1.22.1');
  });
});
