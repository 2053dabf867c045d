// The real CLI as a user runs it: exit codes, one-line errors, JSON summaries, signals.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { sha256 } from '../../src/core/hash.js';
import { domu, startDomu } from '../helpers/cli.js';
import { serve } from '../helpers/http.js';

let dir: string;
let cache: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'domu-cli-'));
  cache = join(dir, 'cache');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('bad input', () => {
  it('a broken description fails with exit 2, the key path and the line, and runs no stage', async () => {
    const broken = join(dir, 'broken.yaml');
    await writeFile(broken, 'guest:\n  name: busybox\n  memory: 512M\n');
    const r = await domu(['build', '--config', broken, '--cache-dir', cache]);
    expect(r.exitCode).toBe(2);
    const first = r.stderr.split('\n')[0]!;
    expect(first).toMatch(/^domu build: error: .*broken\.yaml:3:\d+: guest\.memory: /);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
    expect(existsSync(cache)).toBe(false); // nothing ran, not even the run log
  });

  it('an unknown key is an error naming it', async () => {
    const broken = join(dir, 'broken.yaml');
    await writeFile(broken, 'busybox:\n  version: 1.35.0\n  verison: 1.22.1\n');
    const r = await domu(['fetch', '--config', broken, '--cache-dir', cache]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/broken\.yaml:3:3: .*verison/);
  });

  it('a missing --config file is exit 2', async () => {
    const r = await domu(['fetch', '--config', join(dir, 'nope.yaml'), '--cache-dir', cache]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/nope\.yaml/);
  });

  it('a version outside the table without --sha256 is exit 2 before any download', async () => {
    const r = await domu(['fetch', '--busybox-version', '1.36.1', '--cache-dir', cache, '--json']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/busybox 1\.36\.1 is not in the table of known releases/);
    const summary = JSON.parse(r.stdout) as { ok: boolean; exitCode: number };
    expect(summary).toMatchObject({ ok: false, exitCode: 2 });
    expect(existsSync(cache)).toBe(false);
  });

  it('an unusable --cache-dir is one line naming the path, no stack trace', async () => {
    const file = join(dir, 'a-file');
    await writeFile(file, 'not a directory');
    const r = await domu(['fetch', '--cache-dir', join(file, 'cache'), '--json']);
    expect(r.exitCode).toBe(1);
    expect(r.stderr.split('\n')[0]).toMatch(/^domu fetch: error: cannot mkdir .*a-file\/cache\/runs\/\S+: a part of the path is not a directory$/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, exitCode: 1 });
  });

  it('a bad flag value is exit 2', async () => {
    const r = await domu(['fetch', '--set', 'image.size=banana', '--cache-dir', cache]);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/image\.size/);
  });
});

describe('fetch', () => {
  it('--json prints path, requested and resolved version, sha256 and provider', async () => {
    const body = randomBytes(4096);
    const file = join(dir, 'busybox-9.9.9.tar.bz2');
    await writeFile(file, body);
    const r = await domu(['fetch', '--json', '--busybox-version', '9.9.9', '--sha256', sha256(body), '--source', file, '--cache-dir', cache]);
    expect(r.exitCode, r.stderr).toBe(0);
    const s = JSON.parse(r.stdout) as { ok: boolean; busybox: Record<string, unknown>; stages: { name: string; status: string }[]; versions: Record<string, unknown> };
    expect(s.ok).toBe(true);
    expect(s.busybox).toMatchObject({ requestedVersion: '9.9.9', resolvedVersion: '9.9.9', sha256: sha256(body), provider: 'local', origin: file });
    expect(existsSync(s.busybox.path as string)).toBe(true);
    expect(s.stages).toMatchObject([{ name: 'source', status: 'done' }]);
    expect(s.versions).toMatchObject({ busybox: { requested: '9.9.9', resolved: '9.9.9' } });

    const again = JSON.parse((await domu(['fetch', '--json', '--busybox-version', '9.9.9', '--sha256', sha256(body), '--cache-dir', cache])).stdout) as typeof s;
    expect(again.stages).toMatchObject([{ name: 'source', status: 'cached' }]);
  });

  it('without a terminal, progress is plain timestamped lines', async () => {
    const body = randomBytes(1024);
    const file = join(dir, 'b.tar.bz2');
    await writeFile(file, body);
    const r = await domu(['fetch', '--busybox-version', '9.9.9', '--sha256', sha256(body), '--source', file, '--cache-dir', cache]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^\S+ \[\d\d:\d\d:\d\d\] Fetch busybox 9\.9\.9/m);
    expect(r.stdout).toMatch(/sha256 {2}[0-9a-f]{64}/);
  });

  it('SIGINT during a download stops, exits 130 and leaves nothing in the cache', async () => {
    const body = randomBytes(1 << 20);
    const slow = await serve({
      '/busybox-9.9.9.tar.bz2': (_req, res) => {
        res.writeHead(200, { 'content-length': body.length });
        res.write(body.subarray(0, 1000)); // then stall
      },
    });
    try {
      const child = startDomu(['fetch', '--busybox-version', '9.9.9', '--sha256', sha256(body), '--source', `${slow.url}/busybox-9.9.9.tar.bz2`, '--cache-dir', cache]);
      // wait until the request has arrived, then interrupt
      for (let i = 0; i < 200 && slow.requests.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      expect(slow.requests.length).toBe(1);
      child.kill('SIGINT');
      const r = await child;
      expect(r.exitCode).toBe(130);
      expect(String(r.stderr)).toMatch(/SIGINT/);
      const sources = join(cache, 'sources');
      expect(existsSync(sources) ? readdirSync(sources) : []).toEqual([]);
    } finally {
      await slow.close();
    }
  });
});

describe('doctor', () => {
  it('lists every program with a version and finds them all on this machine', async () => {
    const r = await domu(['doctor', '--json']);
    const rep = JSON.parse(r.stdout) as { ok: boolean; programs: { program: string; version: string | null; path: string | null }[] };
    expect(rep.programs.map((p) => p.program)).toEqual(expect.arrayContaining(['gcc', 'make', 'bzip2', 'mke2fs', 'debugfs', 'e2fsck']));
    for (const p of rep.programs) expect(p.version, p.program).toMatch(/^\d+\.\d+/);
    expect(rep.ok).toBe(true);
    expect(r.exitCode).toBe(0);
  });

  it('on a machine that is not a Dom0 says so for the hypervisor, without failing (xl info answers only on a Dom0)', async () => {
    const r = await domu(['doctor', '--json']);
    const rep = JSON.parse(r.stdout) as { xen: { hypervisor: unknown; absent: string | null; type: string | null; warning: string | null } };
    // xl is not installed on this machine (the tests use Debian's xl unpacked in a private directory).
    expect(rep.xen).toMatchObject({ hypervisor: null, type: 'pvh', warning: null });
    expect(rep.xen.absent).toMatch(/xl not found: this machine is not a Xen Dom0|did not answer/);
    const plain = await domu(['doctor']);
    expect(plain.stdout).toMatch(/^- +xl info +.*not a Xen Dom0|did not answer/m);
  });

  it('names the missing package and the apt-get line when a program is missing', async () => {
    const r = await domu(['doctor'], { env: { PATH: '/nonexistent' } });
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/MISSING gcc/);
    expect(r.stdout).toMatch(/apt-get install -y --no-install-recommends .*gcc/);
  });
});
