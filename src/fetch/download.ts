// Downloads over http(s) with node:http/node:https: redirects, separate connect and idle
// timeouts, retries with exponential backoff, sha256 while streaming, and an atomic result:
// the body goes to a temporary file beside `dest` and is renamed into place only when complete
// (and verified). On any failure or abort the temporary file is removed.
import { createHash } from 'node:crypto';
import { mkdir, open, rename, rm, type FileHandle } from 'node:fs/promises';
import http, { STATUS_CODES, type IncomingMessage } from 'node:http';
import https from 'node:https';
import { dirname } from 'node:path';
import { tempPathFor } from '../core/atomic.js';
import { abortError, DomuError, errorMessage } from '../core/errors.js';
import { SHA256_RE } from '../core/hash.js';
import type { Logger } from '../core/log.js';

export interface DownloadOptions {
  url: string;
  dest: string;
  /** Lower-case hex sha256 the body must have; a mismatch deletes the download and is not retried. */
  expectedSha256?: string;
  signal: AbortSignal;
  log: Logger;
  /** No socket connection (DNS + TCP connect) within this many ms fails the attempt (default 15000). */
  connectTimeoutMs?: number;
  /** No data (TLS, headers or body) for this many ms fails the attempt (default 30000). */
  idleTimeoutMs?: number;
  /** Further attempts after the first on retryable failures (default 3). */
  retries?: number;
  /** Delay before the first retry, doubled for each further one, with a little jitter (default 500). */
  backoffMs?: number;
  /** Bytes received so far in the current attempt, and Content-Length if known. Throttled. */
  onProgress?: (received: number, total: number | undefined) => void;
  /** Redirects followed per attempt (default 5). */
  maxRedirects?: number;
}

export interface DownloadResult {
  sha256: string;
  bytes: number;
  /** The URL the body came from, after redirects. */
  url: string;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const PROGRESS_INTERVAL_MS = 100;

/** A failed attempt; `retryable` says whether another attempt may help. */
class AttemptError extends Error {
  constructor(
    message: string,
    readonly retryable: boolean,
  ) {
    super(message);
    this.name = 'AttemptError';
  }
}

interface Settings {
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  maxRedirects: number;
  signal: AbortSignal;
  log: Logger;
  onProgress: ((received: number, total: number | undefined) => void) | undefined;
}

export async function download(opts: DownloadOptions): Promise<DownloadResult> {
  const { url, dest, signal, log } = opts;
  const start = httpUrl(url);
  if (!start) throw new DomuError(`cannot download ${url}: only http:// and https:// URLs are supported`);
  const expected = opts.expectedSha256?.toLowerCase();
  if (expected !== undefined && !SHA256_RE.test(expected)) {
    throw new DomuError(`cannot download ${url}: expected sha256 is not 64 hex digits: ${opts.expectedSha256}`);
  }
  const retries = Math.max(0, Math.floor(opts.retries ?? 3));
  const backoffMs = Math.max(0, opts.backoffMs ?? 500);
  const settings: Settings = {
    connectTimeoutMs: opts.connectTimeoutMs ?? 15_000,
    idleTimeoutMs: opts.idleTimeoutMs ?? 30_000,
    maxRedirects: Math.max(0, opts.maxRedirects ?? 5),
    signal,
    log,
    onProgress: opts.onProgress,
  };
  if (signal.aborted) throw abortError(signal);

  await mkdir(dirname(dest), { recursive: true });
  const tmp = tempPathFor(dest);
  const attempts = retries + 1;
  let installed = false;
  try {
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await fetchFollowing(start, tmp, settings);
        if (expected !== undefined && result.sha256 !== expected) {
          throw new DomuError(`sha256 mismatch for ${url}: expected ${expected}, got ${result.sha256}; the download was deleted`);
        }
        await rename(tmp, dest);
        installed = true;
        log.debug(`downloaded ${result.url}: ${result.bytes} bytes, sha256 ${result.sha256}`);
        return { ...result, url: result.url === start.href ? url : result.url };
      } catch (e) {
        if (signal.aborted) throw abortError(signal);
        if (!(e instanceof AttemptError)) throw e;
        const tries = `${attempt} attempt${attempt === 1 ? '' : 's'}`;
        if (!e.retryable || attempt >= attempts) throw new DomuError(`download ${url} failed after ${tries}: ${e.message}`, { cause: e });
        const delay = backoffMs * 2 ** (attempt - 1) * (0.9 + 0.2 * Math.random());
        log.info(`retry ${attempt}/${retries} in ${(delay / 1000).toFixed(1)} s: ${e.message}`);
        await sleep(delay, signal);
      }
    }
  } finally {
    if (!installed) await rm(tmp, { force: true });
  }
}

/** `raw` parsed as an http(s) URL, or undefined. */
function httpUrl(raw: string, base?: URL): URL | undefined {
  let u: URL;
  try {
    u = new URL(raw, base);
  } catch {
    return undefined;
  }
  return u.protocol === 'http:' || u.protocol === 'https:' ? u : undefined;
}

/** One attempt: follow redirects from `start`, stream the final body into `tmp`. */
async function fetchFollowing(start: URL, tmp: string, s: Settings): Promise<DownloadResult> {
  let url = start;
  for (let hops = 0; ; hops++) {
    s.log.debug(`GET ${url.href}`);
    const r = await fetchOne(url, tmp, s);
    if (r.kind === 'body') return { sha256: r.sha256, bytes: r.bytes, url: url.href };
    if (hops >= s.maxRedirects) throw new AttemptError(`too many redirects (more than ${s.maxRedirects})`, false);
    const next = httpUrl(r.location, url);
    if (!next) throw new AttemptError(`HTTP ${r.status} from ${url.href} redirects to an unsupported URL: ${r.location}`, false);
    s.log.debug(`HTTP ${r.status}: redirected to ${next.href}`);
    url = next;
  }
}

type FetchOutcome = { kind: 'redirect'; status: number; location: string } | { kind: 'body'; sha256: string; bytes: number };

/** One request. Throws AttemptError for network trouble and bad statuses; AbortedError on abort. */
async function fetchOne(url: URL, tmp: string, s: Settings): Promise<FetchOutcome> {
  if (s.signal.aborted) throw abortError(s.signal);
  const mod = url.protocol === 'https:' ? https : http;
  // agent: false: a fresh socket per request, so the connect timer always measures a real connect.
  const req = mod.request(url, { method: 'GET', agent: false, headers: { 'user-agent': 'domu-builder', accept: '*/*' } });
  // The first reason we killed the request (timeout, abort, callback error) wins over whatever
  // secondary error ("socket hang up", "aborted") node reports because of it.
  let failure: Error | undefined;
  const fail = (err: Error): void => {
    failure ??= err;
    req.destroy(err);
  };
  req.on('error', () => {
    /* reported through the promise below or through the response stream */
  });

  let idleTimer: NodeJS.Timeout | undefined;
  const armIdle = (): void => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => fail(new AttemptError(`no data for ${seconds(s.idleTimeoutMs)} s`, true)), s.idleTimeoutMs);
  };
  const connectTimer = setTimeout(
    () => fail(new AttemptError(`connect timeout after ${seconds(s.connectTimeoutMs)} s`, true)),
    s.connectTimeoutMs,
  );
  req.on('socket', (sock) => {
    const connected = (): void => {
      clearTimeout(connectTimer);
      armIdle();
    };
    if (sock.connecting) sock.once('connect', connected);
    else connected();
  });
  const onAbort = (): void => fail(abortError(s.signal));
  s.signal.addEventListener('abort', onAbort, { once: true });

  let received = 0;
  let total: number | undefined;
  let inBody = false;
  let fh: FileHandle | undefined;
  try {
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      req.once('response', resolve);
      req.once('error', reject);
      req.end();
    });
    armIdle();
    const status = res.statusCode ?? 0;
    const location = res.headers.location;
    if (REDIRECTS.has(status) && location) return { kind: 'redirect', status, location };
    if (status < 200 || status > 299) {
      const text = `HTTP ${status} ${res.statusMessage || STATUS_CODES[status] || ''}`.trimEnd();
      throw new AttemptError(REDIRECTS.has(status) ? `${text} without a Location header` : text, status >= 500 || status === 429);
    }
    const cl = res.headers['content-length'];
    total = cl !== undefined && /^\d+$/.test(cl) ? Number(cl) : undefined;

    try {
      fh = await open(tmp, 'w');
    } catch (e) {
      throw new DomuError(`cannot write ${tmp}: ${errorMessage(e)}`, { cause: e });
    }
    const hash = createHash('sha256');
    let lastReport = 0;
    let lastReported = -1;
    const report = (final: boolean): void => {
      if (!s.onProgress || received === lastReported) return;
      const now = Date.now();
      if (!final && now - lastReport < PROGRESS_INTERVAL_MS) return;
      lastReport = now;
      lastReported = received;
      try {
        s.onProgress(received, total);
      } catch (e) {
        fail(e instanceof Error ? e : new Error(String(e)));
        throw e;
      }
    };
    inBody = true;
    for await (const chunk of res as AsyncIterable<Buffer>) {
      armIdle();
      hash.update(chunk);
      try {
        await fh.write(chunk);
      } catch (e) {
        throw new DomuError(`cannot write ${tmp}: ${errorMessage(e)}`, { cause: e });
      }
      received += chunk.length;
      report(false);
    }
    if (total !== undefined && received < total) throw new AttemptError(`short body: got ${received} of ${total} bytes`, true);
    if (!res.complete) throw new AttemptError(`connection closed after ${received} bytes, before the body was complete`, true);
    report(true);
    return { kind: 'body', sha256: hash.digest('hex'), bytes: received };
  } catch (e) {
    if (failure) throw failure;
    if (e instanceof AttemptError || e instanceof DomuError) throw e;
    // Network errors (refused, reset, DNS, TLS, premature close): worth another attempt.
    const why = errorMessage(e);
    throw new AttemptError(inBody ? `connection lost after ${received} of ${total ?? '?'} bytes: ${why}` : why, true);
  } finally {
    clearTimeout(connectTimer);
    clearTimeout(idleTimer);
    s.signal.removeEventListener('abort', onAbort);
    req.destroy();
    await fh?.close();
  }
}

function seconds(ms: number): string {
  return String(Number((ms / 1000).toFixed(3)));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(abortError(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
