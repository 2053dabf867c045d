// Counts in words: "1 module", "2 modules".

/** `n` and the noun, singular for exactly one: count(1, 'module') = "1 module". */
export function count(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}
