// Sizes as people write them: `1G`, `1024M`, `512K`, `1T`, `1GiB`, `4096B`, or a plain number of
// bytes. Multiples are binary (K = 1024), as for dd, truncate and mke2fs.

const UNITS = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 } as const;
type Unit = keyof typeof UNITS;

const SIZE_RE = /^(\d+(?:\.\d+)?)\s*(?:([KMGT])(?:i?B)?|B)?$/i;

function notASize(text: string, why = 'use a number of bytes or K/M/G/T, e.g. 1G'): Error {
  return new Error(`${JSON.stringify(text)} is not a size: ${why}`);
}

/** Bytes for a size written as text (`1G`, `1024M`, `1GiB`, `1073741824`) or a number of bytes. */
export function parseSize(text: string | number): number {
  if (typeof text === 'number') {
    if (!Number.isSafeInteger(text) || text < 0) {
      throw new Error(`${text} is not a size: a number of bytes must be a whole number ≥ 0`);
    }
    return text;
  }
  const m = SIZE_RE.exec(text.trim());
  if (m === null) throw notASize(text);
  const mantissa = m[1]!;
  const unit = m[2]?.toUpperCase() as Unit | undefined;
  const factor = unit === undefined ? 1 : UNITS[unit];
  let bytes: number;
  if (mantissa.includes('.')) {
    // Exact decimal arithmetic on the digits: 1.5G is 1610612736 bytes, 0.1G is no whole number.
    const [whole, frac] = mantissa.split('.') as [string, string];
    const scale = 10n ** BigInt(frac.length);
    const num = (BigInt(whole) * scale + BigInt(frac)) * BigInt(factor);
    if (num % scale !== 0n) throw notASize(text, 'it is not a whole number of bytes');
    const b = num / scale;
    if (b > BigInt(Number.MAX_SAFE_INTEGER)) throw notASize(text, 'too large');
    bytes = Number(b);
  } else {
    bytes = Number(mantissa) * factor;
  }
  if (!Number.isSafeInteger(bytes)) throw notASize(text, 'too large');
  return bytes;
}

/** The shortest exact form parseSize reads back (`1G`, `1536M`, `4096`… ), or an approximate one
 * with a decimal (`1.3G`) when no unit divides the size. */
export function formatSize(bytes: number): string {
  if (!Number.isFinite(bytes)) return String(bytes);
  const units: Unit[] = ['T', 'G', 'M', 'K'];
  for (const u of units) {
    if (bytes !== 0 && bytes % UNITS[u] === 0) return `${bytes / UNITS[u]}${u}`;
  }
  for (const u of units) {
    if (Math.abs(bytes) >= UNITS[u]) return `${(bytes / UNITS[u]).toFixed(1)}${u}`;
  }
  return `${bytes}B`;
}
