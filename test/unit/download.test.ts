import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { download, type DownloadOptions } from '../../src/fetch/download.js';
import { AbortedError, DomuError } from '../../src/core/errors.js';
import { sha256 } from '../../src/core/hash.js';
import { memoryLogger } from '../../src/core/log.js';

interface TestServer {
  url: string;
  requests: string[];
  close(): Promise<void>;
}

const servers: TestServer[] = [];
let dir: string;

async function serve(handler: (req: http.IncomingMessage, res: http.ServerResponse, n: number) => void): Promise<TestServer> {
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? '');
    handler(req, res, requests.length);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  const s: TestServer = {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  servers.push(s);
  return s;
}

function sendBody(res: http.ServerResponse, body: Buffer): void {
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
  res.end(body);
}

/** Fast defaults for tests; each test overrides what it checks. */
function opts(url: string, extra: Partial<DownloadOptions> = {}): DownloadOptions & { log: ReturnType<typeof memoryLogger> } {
  return {
    url,
    dest: join(dir, 'out.bin'),
    signal: new AbortController().signal,
    log: memoryLogger(),
    connectTimeoutMs: 2000,
    idleTimeoutMs: 2000,
    retries: 0,
    backoffMs: 5,
    ...extra,
  } as DownloadOptions & { log: ReturnType<typeof memoryLogger> };
}

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected the download to fail');
}

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'domu-dl-'));
});

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
  await rm(dir, { recursive: true, force: true });
});

describe('download', () => {
  it('retries a 503 and a connection dropped mid-body, then succeeds', async () => {
    const body = randomBytes(256 * 1024);
    const srv = await serve((_req, res, n) => {
      if (n === 1) {
        res.writeHead(503).end('busy');
      } else if (n === 2) {
        res.writeHead(200, { 'content-length': body.length });
        res.write(body.subarray(0, 1000), () => res.socket?.destroy());
      } else {
        sendBody(res, body);
      }
    });
    const o = opts(`${srv.url}/file`, { retries: 3 });
    const r = await download(o);
    expect(srv.requests).toHaveLength(3);
    expect(r.sha256).toBe(sha256(body));
    expect(r.bytes).toBe(body.length);
    expect(r.url).toBe(`${srv.url}/file`);
    expect((await readFile(o.dest)).equals(body)).toBe(true);
    expect(await readdir(dir)).toEqual(['out.bin']);
    const retries = o.log.lines.filter((l) => l.startsWith('info retry'));
    expect(retries).toHaveLength(2);
    expect(retries[0]).toMatch(/^info retry 1\/3 in \d+\.\d s: HTTP 503 Service Unavailable$/);
    expect(retries[1]).toMatch(/^info retry 2\/3 in \d+\.\d s: connection lost after \d+ of 262144 bytes/);
  });

  it('accepts a matching expected sha256', async () => {
    const body = randomBytes(1000);
    const srv = await serve((_req, res) => sendBody(res, body));
    const r = await download(opts(`${srv.url}/f`, { expectedSha256: sha256(body).toUpperCase() }));
    expect(r.sha256).toBe(sha256(body));
    expect(await readdir(dir)).toEqual(['out.bin']);
  });

  it('fails at once on 404 and leaves nothing', async () => {
    const srv = await serve((_req, res) => res.writeHead(404).end('no'));
    const url = `${srv.url}/missing`;
    const err = await failure(download(opts(url, { retries: 3 })));
    expect(err).toBeInstanceOf(DomuError);
    expect(err.message).toBe(`download ${url} failed after 1 attempt: HTTP 404 Not Found`);
    expect(srv.requests).toHaveLength(1);
    expect(await readdir(dir)).toEqual([]);
  });

  it('gives up after the last retry with one line naming the last reason', async () => {
    const srv = await serve((_req, res) => res.writeHead(500).end());
    const url = `${srv.url}/x`;
    const o = opts(url, { retries: 2 });
    const err = await failure(download(o));
    expect(err.message).toBe(`download ${url} failed after 3 attempts: HTTP 500 Internal Server Error`);
    expect(err.message).not.toContain('\n');
    expect(srv.requests).toHaveLength(3);
    expect(o.log.lines.filter((l) => l.startsWith('info retry'))).toHaveLength(2);
    expect(await readdir(dir)).toEqual([]);
  });

  it('deletes the download on a sha256 mismatch and does not retry', async () => {
    const body = Buffer.from('hello world\n');
    const srv = await serve((_req, res) => sendBody(res, body));
    const url = `${srv.url}/f`;
    const expected = 'ab'.repeat(32);
    const err = await failure(download(opts(url, { expectedSha256: expected, retries: 3 })));
    expect(err).toBeInstanceOf(DomuError);
    expect(err.message).toBe(`sha256 mismatch for ${url}: expected ${expected}, got ${sha256(body)}; the download was deleted`);
    expect(srv.requests).toHaveLength(1);
    expect(await readdir(dir)).toEqual([]);
  });

  it('follows relative and absolute redirects', async () => {
    const body = randomBytes(5000);
    const other = await serve((_req, res) => sendBody(res, body));
    const srv = await serve((req, res) => {
      if (req.url === '/a') res.writeHead(302, { location: '../dir/b?x=1' }).end();
      else if (req.url === '/dir/b?x=1') res.writeHead(301, { location: `${other.url}/final` }).end();
      else res.writeHead(404).end();
    });
    const o = opts(`${srv.url}/a`);
    const r = await download(o);
    expect(srv.requests).toEqual(['/a', '/dir/b?x=1']);
    expect(other.requests).toEqual(['/final']);
    expect(r.url).toBe(`${other.url}/final`);
    expect(r.sha256).toBe(sha256(body));
    expect((await readFile(o.dest)).equals(body)).toBe(true);
  });

  it('stops after maxRedirects and refuses redirects to other schemes', async () => {
    const srv = await serve((req, res) => {
      if (req.url === '/ftp') res.writeHead(302, { location: 'ftp://example.invalid/f' }).end();
      else res.writeHead(307, { location: '/loop' }).end();
    });
    const loop = await failure(download(opts(`${srv.url}/loop`, { maxRedirects: 2, retries: 2 })));
    expect(loop.message).toMatch(/failed after 1 attempt: too many redirects \(more than 2\)$/);
    expect(srv.requests).toHaveLength(3);
    const ftp = await failure(download(opts(`${srv.url}/ftp`)));
    expect(ftp.message).toContain('ftp://example.invalid/f');
    expect(await readdir(dir)).toEqual([]);
  });

  it('rejects URLs that are not http or https, naming them', async () => {
    const err = await failure(download(opts('ftp://example.invalid/f')));
    expect(err).toBeInstanceOf(DomuError);
    expect(err.message).toContain('ftp://example.invalid/f');
    const bad = await failure(download(opts('not a url')));
    expect(bad.message).toContain('not a url');
  });

  it('fails on an idle body (headers and some bytes, then nothing) and leaves nothing', async () => {
    const srv = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': 10_000 });
      res.write(Buffer.alloc(100));
    });
    const started = Date.now();
    const err = await failure(download(opts(`${srv.url}/stall`, { idleTimeoutMs: 300, retries: 1 })));
    expect(err.message).toMatch(/failed after 2 attempts: no data for 0\.3 s$/);
    expect(srv.requests).toHaveLength(2);
    expect(Date.now() - started).toBeLessThan(3000);
    expect(await readdir(dir)).toEqual([]);
  });

  it('fails when the server never sends headers (idle timeout)', async () => {
    const srv = await serve(() => {
      /* never answer */
    });
    const err = await failure(download(opts(`${srv.url}/silent`, { idleTimeoutMs: 300 })));
    expect(err.message).toMatch(/failed after 1 attempt: no data for 0\.3 s$/);
    expect(await readdir(dir)).toEqual([]);
  });

  // Relies on Linux dropping SYNs when a listener's accept queue is full; other kernels may refuse.
  it.skipIf(process.platform !== 'linux')('fails on a connect timeout (listener whose accept queue is full)', async () => {
    // A listening socket that never accepts: a worker thread listens with backlog 1 and then blocks
    // its event loop. Once the kernel's accept queue is full, Linux drops further SYNs, so a new
    // connection stays in "connecting" — a real connect stall on loopback.
    const gate = new Int32Array(new SharedArrayBuffer(4));
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const server = require('node:net').createServer();
       server.listen({ port: 0, host: '127.0.0.1', backlog: 1 }, () => {
         parentPort.postMessage(server.address().port);
         Atomics.wait(workerData, 0, 0);
         server.close();
       });`,
      { eval: true, workerData: gate },
    );
    const fillers: net.Socket[] = [];
    try {
      const port = await new Promise<number>((resolve, reject) => {
        worker.once('message', resolve);
        worker.once('error', reject);
      });
      // Fill the queue: connect until one connection does not complete.
      for (let i = 0; i < 16; i++) {
        const sock = net.connect(port, '127.0.0.1');
        sock.on('error', () => {});
        fillers.push(sock);
        const ok = await new Promise<boolean>((resolve) => {
          const t = setTimeout(() => resolve(false), 300);
          sock.once('connect', () => {
            clearTimeout(t);
            resolve(true);
          });
        });
        if (!ok) break;
      }
      expect(fillers.at(-1)?.connecting).toBe(true);
      const url = `http://127.0.0.1:${port}/f`;
      const err = await failure(download(opts(url, { connectTimeoutMs: 300, retries: 1 })));
      expect(err.message).toBe(`download ${url} failed after 2 attempts: connect timeout after 0.3 s`);
      expect(await readdir(dir)).toEqual([]);
    } finally {
      for (const s of fillers) s.destroy();
      Atomics.store(gate, 0, 1);
      Atomics.notify(gate, 0);
      await worker.terminate();
    }
  });

  it('stops at once on abort during a slow download and leaves nothing', async () => {
    const timers: NodeJS.Timeout[] = [];
    const srv = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': 1_000_000 });
      timers.push(setInterval(() => res.write(Buffer.alloc(1000)), 20));
    });
    const ac = new AbortController();
    let seen = 0;
    const started = Date.now();
    const p = download(
      opts(`${srv.url}/slow`, {
        signal: ac.signal,
        retries: 3,
        onProgress: (n) => {
          seen = n;
          if (n >= 3000) ac.abort();
        },
      }),
    );
    const err = await failure(p);
    timers.forEach(clearInterval);
    expect(err).toBeInstanceOf(AbortedError);
    expect(seen).toBeGreaterThan(0);
    expect(srv.requests).toHaveLength(1);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await readdir(dir)).toEqual([]);
  });

  it('stops at once on abort while waiting to retry', async () => {
    const srv = await serve((_req, res) => res.writeHead(503).end());
    const ac = new AbortController();
    const started = Date.now();
    const p = download(opts(`${srv.url}/x`, { signal: ac.signal, retries: 3, backoffMs: 10_000 }));
    setTimeout(() => ac.abort(), 100);
    const err = await failure(p);
    expect(err).toBeInstanceOf(AbortedError);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(srv.requests).toHaveLength(1);
    expect(await readdir(dir)).toEqual([]);
  });

  it('reports increasing byte counts ending at the total', async () => {
    const chunk = randomBytes(64 * 1024);
    const total = chunk.length * 4;
    const srv = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': total });
      let sent = 0;
      const next = (): void => {
        res.write(chunk);
        if (++sent < 4) setTimeout(next, 120);
        else res.end();
      };
      next();
    });
    const calls: [number, number | undefined][] = [];
    const r = await download(opts(`${srv.url}/p`, { onProgress: (n, t) => calls.push([n, t]) }));
    expect(r.bytes).toBe(total);
    expect(calls.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < calls.length; i++) expect(calls[i]![0]).toBeGreaterThan(calls[i - 1]![0]);
    expect(calls.every(([, t]) => t === total)).toBe(true);
    expect(calls.at(-1)).toEqual([total, total]);
  });

  it('reports an unknown total for a chunked body', async () => {
    const body = randomBytes(3000);
    const srv = await serve((_req, res) => {
      res.writeHead(200);
      res.end(body);
    });
    const calls: [number, number | undefined][] = [];
    const r = await download(opts(`${srv.url}/c`, { onProgress: (n, t) => calls.push([n, t]) }));
    expect(r.sha256).toBe(sha256(body));
    expect(calls.at(-1)).toEqual([body.length, undefined]);
  });
});
