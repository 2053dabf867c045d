// kconfig .config handling: parsing, merging, serializing, and verifying a fragment after a REAL
// `make oldconfig` on the real busybox 1.35.0 tree, with reasons from its real Kconfig sources.
import { readFileSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DomuError, InputError } from '../../src/core/errors.js';
import { run, type ExecEnv } from '../../src/core/exec.js';
import {
  describe as describeValue,
  emptyConfig,
  formatAssignment,
  get,
  isOn,
  mergeFragment,
  parseConfig,
  parseFragment,
  serializeConfig,
  set,
  type KConfig,
} from '../../src/busybox/kconfig.js';
import { evalExpr, formatExpr, parseExpr } from '../../src/busybox/kconfig-expr.js';
import { scanKconfigDeps, type KconfigDeps } from '../../src/busybox/kconfig-sources.js';
import { formatMismatches, verifyFragment } from '../../src/busybox/kconfig-verify.js';
import { memoryLogger } from '../../src/core/log.js';
import { safeExtract } from '../../src/fs/tar.js';
import { getBusyboxTarball } from '../helpers/busybox-tarball.js';
import { tempDir } from '../helpers/context.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/kconfig/', import.meta.url));

function errorOf(fn: () => unknown): Error {
  try {
    fn();
  } catch (e) {
    return e as Error;
  }
  throw new Error('expected an error');
}

describe('parseConfig / parseFragment', () => {
  it('reads the value kinds, keeps comments and blank lines', () => {
    const text = [
      '#',
      '# Automatically generated make config: don\'t edit',
      '#',
      'CONFIG_A=y',
      'CONFIG_B=m',
      '# CONFIG_C is not set',
      '',
      'CONFIG_D="x \\"quoted\\" back\\\\slash # not a comment"',
      'CONFIG_E=-12',
      'CONFIG_F=0x1F',
      'CONFIG_G=n',
      'CONFIG_H=""',
      '',
    ].join('\n');
    const k = parseConfig(text, '.config');
    expect(Object.fromEntries(k.values)).toEqual({
      A: { kind: 'bool', value: 'y' },
      B: { kind: 'bool', value: 'm' },
      C: { kind: 'bool', value: 'n' },
      D: { kind: 'string', value: 'x "quoted" back\\slash # not a comment' },
      E: { kind: 'number', value: '-12' },
      F: { kind: 'number', value: '0x1F' },
      G: { kind: 'bool', value: 'n' },
      H: { kind: 'string', value: '' },
    });
    expect(k.lines.filter((l) => l.kind === 'text').map((l) => (l.kind === 'text' ? l.text : ''))).toEqual(['#', "# Automatically generated make config: don't edit", '#', '']);
    expect(k.duplicates).toEqual([]);
    // Unchanged lines are written back as they were (CONFIG_G=n included).
    expect(serializeConfig(k)).toBe(text);
  });

  it('keeps a missing final newline, and the empty text', () => {
    expect(serializeConfig(parseConfig('CONFIG_A=y', 'x'))).toBe('CONFIG_A=y');
    expect(serializeConfig(parseConfig('', 'x'))).toBe('');
    expect(parseConfig('', 'x').values.size).toBe(0);
  });

  it('reads the fixture fragment: last assignment wins, duplicates are reported', async () => {
    const f = parseFragment(await readFile(join(FIXTURES, 'good.fragment'), 'utf8'), 'good.fragment');
    expect(f.duplicates).toEqual(['STATIC']);
    expect(get(f, 'STATIC')).toEqual({ kind: 'bool', value: 'n' });
    expect(get(f, 'EXTRA_CFLAGS')).toEqual({ kind: 'string', value: '-include "/opt/compat.h" -DPATH=\\x # not a comment' });
    expect(get(f, 'FEATURE_EDITING_MAX_LEN')).toEqual({ kind: 'number', value: '2048' });
    // The duplicate keeps the position of its last assignment.
    expect(f.lines.filter((l) => l.kind === 'symbol').map((l) => (l.kind === 'symbol' ? l.symbol : ''))).toEqual([
      'FEATURE_INETD_RPC',
      'EXTRA_CFLAGS',
      'FEATURE_EDITING_MAX_LEN',
      'STATIC',
    ]);
  });

  it('rejects a malformed fragment line with an InputError naming label:line', () => {
    const e = errorOf(() => parseFragment(readFileSyncText('bad.fragment'), 'bad.fragment'));
    expect(e).toBeInstanceOf(InputError);
    expect((e as InputError).exitCode).toBe(2);
    expect(e.message).toMatch(/^bad\.fragment:4: CONFIG_TC: text after the value: "y # trailing comments are not kconfig" \(kconfig allows no comment after a value\)$/);
  });

  it.each([
    ['STATIC=y', /^f:2: not a kconfig line: "STATIC=y" \(symbols are written with their CONFIG_ prefix\)/],
    ['hello world', /^f:2: not a kconfig line: "hello world"/],
    ['CONFIG_X=yes', /^f:2: CONFIG_X: invalid value "yes"/],
    ['CONFIG_X=', /^f:2: CONFIG_X: empty value/],
    ['CONFIG_X="open', /^f:2: CONFIG_X: unterminated string/],
    ['CONFIG_X="a" # why', /^f:2: CONFIG_X: text after the closing quote: "# why"/],
    ['CONFIG_X=12 34', /^f:2: CONFIG_X: text after the value/],
  ])('rejects %j', (line, re) => {
    const e = errorOf(() => parseFragment(`# ok\n${line}\n`, 'f'));
    expect(e).toBeInstanceOf(InputError);
    expect(e.message).toMatch(re);
  });

  it('a malformed .config is a DomuError (not bad input)', () => {
    const e = errorOf(() => parseConfig('CONFIG_A=y\nCONFIG_B=maybe\n', '/tree/.config'));
    expect(e).toBeInstanceOf(DomuError);
    expect(e).not.toBeInstanceOf(InputError);
    expect(e.message).toMatch(/^\/tree\/\.config:2: CONFIG_B: invalid value "maybe"/);
  });
});

function readFileSyncText(name: string): string {
  return readFileSync(join(FIXTURES, name), 'utf8');
}

describe('serialize, get/set, describe', () => {
  it('writes exact kconfig syntax', () => {
    expect(formatAssignment('A', { kind: 'bool', value: 'y' })).toBe('CONFIG_A=y');
    expect(formatAssignment('A', { kind: 'bool', value: 'm' })).toBe('CONFIG_A=m');
    expect(formatAssignment('A', { kind: 'bool', value: 'n' })).toBe('# CONFIG_A is not set');
    expect(formatAssignment('A', { kind: 'string', value: 'say "hi" \\o/' })).toBe('CONFIG_A="say \\"hi\\" \\\\o/"');
    expect(formatAssignment('A', { kind: 'number', value: '0x10' })).toBe('CONFIG_A=0x10');
  });

  it('set replaces in place, appends new symbols, and rewrites a changed line canonically', () => {
    const k = parseConfig('# head\n# CONFIG_A is not set\nCONFIG_B="x"\n', 'c');
    set(k, 'A', { kind: 'bool', value: 'y' });
    set(k, 'C', { kind: 'number', value: '7' });
    expect(serializeConfig(k)).toBe('# head\nCONFIG_A=y\nCONFIG_B="x"\nCONFIG_C=7\n');
    set(k, 'A', { kind: 'bool', value: 'n' });
    expect(serializeConfig(k)).toBe('# head\n# CONFIG_A is not set\nCONFIG_B="x"\nCONFIG_C=7\n');
  });

  it('uses bare names and refuses CONFIG_-prefixed ones', () => {
    const k = emptyConfig();
    set(k, 'STATIC', { kind: 'bool', value: 'y' });
    expect(get(k, 'STATIC')).toEqual({ kind: 'bool', value: 'y' });
    expect(() => get(k, 'CONFIG_STATIC')).toThrow(/use the bare name STATIC/);
    expect(() => set(k, 'CONFIG_STATIC', { kind: 'bool', value: 'y' })).toThrow(DomuError);
    expect(() => set(k, 'X', { kind: 'string', value: 'a\nb' })).toThrow(/line break/);
    expect(() => set(k, 'X', { kind: 'number', value: '12abc' })).toThrow(/not a kconfig number/);
    expect(serializeConfig(k)).toBe('CONFIG_STATIC=y\n');
  });

  it('describes values for messages', () => {
    expect(describeValue({ kind: 'bool', value: 'y' })).toBe('y');
    expect(describeValue({ kind: 'bool', value: 'n' })).toBe('not set');
    expect(describeValue({ kind: 'string', value: 'a"b' })).toBe('"a\\"b"');
    expect(describeValue({ kind: 'number', value: '42' })).toBe('42');
    expect(describeValue(undefined)).toBe('absent');
    expect(isOn({ kind: 'bool', value: 'm' })).toBe(true);
    expect(isOn({ kind: 'bool', value: 'n' })).toBe(false);
    expect(isOn(undefined)).toBe(false);
  });
});

describe('mergeFragment', () => {
  const base = ['# top', 'CONFIG_A=y', '# CONFIG_B is not set', 'CONFIG_S="old"', '# tail comment', 'CONFIG_Z=y', ''].join('\n');

  it('replaces in place (both directions of "is not set"), appends new symbols, keeps the rest', () => {
    const b = parseConfig(base, '.config');
    const f = parseFragment(['# my fragment', '# CONFIG_A is not set', 'CONFIG_B=y', 'CONFIG_S="new \\"one\\" \\\\ here"', 'CONFIG_NEW=m', 'CONFIG_NEW2=n', ''].join('\n'), 'f');
    const merged = mergeFragment(b, f);
    expect(serializeConfig(merged)).toBe(
      [
        '# top',
        '# CONFIG_A is not set',
        'CONFIG_B=y',
        'CONFIG_S="new \\"one\\" \\\\ here"',
        '# tail comment',
        'CONFIG_Z=y',
        'CONFIG_NEW=m',
        '# CONFIG_NEW2 is not set',
        '',
      ].join('\n'),
    );
    expect(get(merged, 'S')).toEqual({ kind: 'string', value: 'new "one" \\ here' });
    // The base is untouched.
    expect(serializeConfig(b)).toBe(base);
    // Re-parsing the merged text gives the same values.
    expect(parseConfig(serializeConfig(merged), 'm').values).toEqual(merged.values);
  });

  it('an identical value keeps the base line byte for byte', () => {
    const b = parseConfig('CONFIG_N=0x0010\n', 'c');
    expect(serializeConfig(mergeFragment(b, parseFragment('CONFIG_N=0x10\n', 'f')))).toBe('CONFIG_N=0x0010\n');
    expect(serializeConfig(mergeFragment(b, parseFragment('CONFIG_N=17\n', 'f')))).toBe('CONFIG_N=17\n');
  });
});

describe('kconfig expressions', () => {
  it.each([
    ['A && B', 'A && B'],
    ['(A || B) && !C', '(A || B) && !C'],
    ['!(A || B)', '!(A || B)'],
    ['A || B && C', 'A || B && C'],
    ['((A))', 'A'],
    ['FEEL = "good" && X != y', 'FEEL = "good" && X != y'],
  ])('%s', (src, printed) => {
    expect(formatExpr(parseExpr(src))).toBe(printed);
  });

  it('keeps what it cannot parse as raw text (and counts it as met)', () => {
    const e = parseExpr('A && (B');
    expect(e.op).toBe('raw');
    expect(formatExpr(e)).toBe('A && (B');
    expect(evalExpr(e, emptyConfig())).toBe(2);
  });

  it('evaluates in tristate logic; absent is n', () => {
    const k = parseConfig('CONFIG_A=y\nCONFIG_M=m\n# CONFIG_N is not set\nCONFIG_S="good"\n', 'c');
    expect(evalExpr(parseExpr('A && M'), k)).toBe(1);
    expect(evalExpr(parseExpr('N || ABSENT'), k)).toBe(0);
    expect(evalExpr(parseExpr('!N && !ABSENT'), k)).toBe(2);
    expect(evalExpr(parseExpr('S = "good"'), k)).toBe(2);
    expect(evalExpr(parseExpr('S != "good"'), k)).toBe(0);
  });
});

describe('scanKconfigDeps on the fixture tree', () => {
  let deps: KconfigDeps;
  beforeAll(async () => {
    deps = await scanKconfigDeps(join(FIXTURES, 'tree'));
  });
  const depsOf = (s: string) => deps.symbols.get(s)?.dependsText;

  it('finds every symbol, skips help text', () => {
    expect([...deps.symbols.keys()].sort()).toEqual(
      ['BASE', 'FEEL', 'GEN_AFTER', 'GEN_APPLET', 'GEN_APPLET_OPT', 'HELPER', 'LEGACY', 'LONELY', 'NET', 'PICK_A', 'PICK_B', 'RPC', 'SHARED', 'SHARED_EXTRA', 'SUB_FEATURE', 'TOOL', 'TOOL_RPC'].sort(),
    );
    expect(depsOf('BASE')).toBeUndefined();
    expect(deps.files).toEqual(['Config.in', 'sub/Config.in', 'gen/Config.in (from Config.src)', 'lonely/Config.in']);
  });

  it('combines own depends (continued lines, several lines), if blocks, menu and choice depends', () => {
    expect(depsOf('RPC')).toBe('NET && BASE');
    expect(depsOf('TOOL')).toBe('NET');
    expect(depsOf('TOOL_RPC')).toBe('NET && TOOL && RPC');
    expect(depsOf('HELPER')).toBeUndefined();
    expect(depsOf('SHARED')).toBe('(NET || BASE) && !LEGACY');
    expect(depsOf('SHARED_EXTRA')).toBe('(NET || BASE) && SHARED && FEEL = "good"');
    expect(depsOf('LEGACY')).toBeUndefined();
    expect(depsOf('PICK_A')).toBe('BASE');
    expect(depsOf('SUB_FEATURE')).toBe('TOOL && (RPC || LEGACY) && !HELPER');
    expect(depsOf('LONELY')).toBe('NET');
    expect([...deps.symbols.get('SUB_FEATURE')!.refs].sort()).toEqual(['HELPER', 'LEGACY', 'RPC', 'TOOL']);
  });

  it('reads Config.src with the //config: lines of the directory\'s .c files at INSERT', () => {
    expect(depsOf('GEN_APPLET')).toBeUndefined();
    expect(depsOf('GEN_APPLET_OPT')).toBe('GEN_APPLET && BASE');
    expect(depsOf('GEN_AFTER')).toBe('GEN_APPLET');
    expect(deps.symbols.get('GEN_APPLET_OPT')!.defined).toEqual(['gen/applet.c:8']);
    expect(deps.symbols.get('GEN_AFTER')!.defined).toEqual(['gen/Config.src:9']);
  });

  it('records types, selects and choices', () => {
    expect(deps.symbols.get('FEEL')!.type).toBe('string');
    expect(deps.symbols.get('SUB_FEATURE')!.type).toBe('tristate');
    expect(deps.symbols.get('HELPER')!.selectedBy.map((s) => s.symbol)).toEqual(['TOOL']);
    expect(deps.symbols.get('PICK_B')!.choice).toEqual(['PICK_A', 'PICK_B']);
    expect(deps.symbols.get('TOOL')!.choice).toBeUndefined();
  });

  it('verifyFragment gives the reason from the sources', () => {
    const final = parseConfig(
      ['CONFIG_BASE=y', '# CONFIG_NET is not set', '# CONFIG_RPC is not set', 'CONFIG_TOOL=y', 'CONFIG_HELPER=y', 'CONFIG_LEGACY=y', '# CONFIG_PICK_A is not set', 'CONFIG_PICK_B=y', 'CONFIG_FEEL="bad"', ''].join('\n'),
      '.config',
    );
    const fragment = parseFragment(
      [
        'CONFIG_BASE=y', // satisfied
        '# CONFIG_ABSENT_BUT_KNOWN is not set', // absent counts as n: satisfied
        'CONFIG_RPC=y',
        'CONFIG_SUB_FEATURE=y',
        'CONFIG_SHARED=y',
        'CONFIG_SHARED_EXTRA=y',
        '# CONFIG_HELPER is not set',
        'CONFIG_PICK_A=y',
        'CONFIG_NOPE=y',
        'CONFIG_FEEL="good"',
        '',
      ].join('\n'),
      'f',
    );
    const m = verifyFragment(final, fragment, deps);
    expect(m.map((x) => [x.symbol, x.cause])).toEqual([
      ['RPC', 'depends'],
      ['SUB_FEATURE', 'depends'],
      ['SHARED', 'depends'],
      ['SHARED_EXTRA', 'depends'],
      ['HELPER', 'select'],
      ['PICK_A', 'choice'],
      ['NOPE', 'no-such-symbol'],
      ['FEEL', 'unknown'],
    ]);
    expect(formatMismatches(m).split('\n')).toEqual([
      'CONFIG_RPC: wanted y, got not set — depends on NET && BASE, and NET is off',
      'CONFIG_SUB_FEATURE: wanted y, got absent — depends on TOOL && (RPC || LEGACY) && !HELPER, and HELPER is on',
      'CONFIG_SHARED: wanted y, got absent — depends on (NET || BASE) && !LEGACY, and LEGACY is on',
      'CONFIG_SHARED_EXTRA: wanted y, got absent — depends on (NET || BASE) && SHARED && FEEL = "good", and SHARED is off, FEEL is "bad"',
      'CONFIG_HELPER: wanted not set, got y — selected by TOOL',
      'CONFIG_PICK_A: wanted y, got not set — in a choice with PICK_B, and PICK_B is the one set',
      'CONFIG_NOPE: wanted y, got absent — no such symbol in this busybox release',
      'CONFIG_FEEL: wanted "good", got "bad" — oldconfig changed it (a select or a choice?)',
    ]);
    // Without the sources: a guess.
    expect(verifyFragment(final, fragment).map((x) => x.reason)).toContain('not in the final .config (no such symbol, or its dependencies are off)');
  });
});

// ---------------------------------------------------------------------------------------------
// The real thing

const env: ExecEnv = { log: memoryLogger(), signal: new AbortController().signal };
let root: string | undefined;
let tree: string;
let defconfigText: string;
let pristineDeps: KconfigDeps;

beforeAll(async () => {
  const tarball = await getBusyboxTarball();
  root = await tempDir('domu-kconfig-');
  tree = join(root, 'busybox-1.35.0');
  await safeExtract({ archive: tarball, dest: tree, env });
  // Before make: only the top Config.in exists; the rest comes from Config.src + *.c.
  pristineDeps = await scanKconfigDeps(tree);
  await run(env, 'make', ['defconfig'], { cwd: tree });
  defconfigText = await readFile(join(tree, '.config'), 'utf8');
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

describe('the real busybox 1.35.0 tree', () => {
  let deps: KconfigDeps;
  let defconfig: KConfig;
  beforeAll(async () => {
    deps = await scanKconfigDeps(tree);
    defconfig = parseConfig(defconfigText, '.config');
  });

  it('round-trips the .config written by make defconfig', () => {
    expect(defconfig.values.size).toBeGreaterThan(1000);
    expect(defconfig.duplicates).toEqual([]);
    expect(serializeConfig(defconfig)).toBe(defconfigText);
    expect(get(defconfig, 'INETD')).toEqual({ kind: 'bool', value: 'y' });
    expect(get(defconfig, 'STATIC')).toEqual({ kind: 'bool', value: 'n' });
    expect(get(defconfig, 'PREFIX')).toEqual({ kind: 'string', value: './_install' });
    // And serializing from the values alone (no kept raw lines) gives the same text.
    const canonical = { ...defconfig, lines: defconfig.lines.map((l) => (l.kind === 'symbol' ? { kind: 'symbol' as const, symbol: l.symbol } : l)) };
    expect(serializeConfig(canonical)).toBe(defconfigText);
  });

  it('scans exactly the symbols of the .config, and every symbol that is on has its dependencies met', async () => {
    expect([...deps.symbols.keys()].sort()).toEqual([...defconfig.values.keys()].sort());
    const unmet = [...defconfig.values].filter(([s, v]) => isOn(v) && deps.symbols.get(s)?.depends !== undefined && evalExpr(deps.symbols.get(s)!.depends!, defconfig) === 0);
    expect(unmet).toEqual([]);
    expect(deps.symbols.get('FEATURE_INETD_RPC')!.dependsText).toBe('INETD');
    expect(deps.symbols.get('FEATURE_SH_MATH_64')!.dependsText).toBe('(SHELL_ASH || SHELL_HUSH) && FEATURE_SH_MATH');
    expect(deps.symbols.get('SHELL_ASH')!.selectedBy.map((s) => s.symbol)).toEqual(['SH_IS_ASH', 'BASH_IS_ASH', 'ASH']);
    expect(deps.symbols.get('SH_IS_ASH')!.choice).toEqual(['SH_IS_ASH', 'SH_IS_HUSH', 'SH_IS_NONE']);
  });

  it('gives the same dependencies before make (Config.src + //config:) as after (generated Config.in)', () => {
    const summary = (d: KconfigDeps) =>
      Object.fromEntries([...d.symbols].map(([n, s]) => [n, { deps: s.dependsText, type: s.type, sel: s.selectedBy.map((x) => x.symbol), choice: s.choice }]));
    expect(summary(pristineDeps)).toEqual(summary(deps));
    expect(pristineDeps.files.filter((f) => f.endsWith('(from Config.src)')).length).toBe(24);
  });

  it('verifyFragment explains what a real make oldconfig undid', async () => {
    const fragmentText = [
      '# turns dependencies off and dependents on',
      '# CONFIG_INETD is not set',
      'CONFIG_FEATURE_INETD_RPC=y',
      '# CONFIG_FEATURE_SH_MATH is not set',
      'CONFIG_FEATURE_SH_MATH_64=y',
      '# CONFIG_SHELL_ASH is not set',
      'CONFIG_NO_SUCH_OPTION=y',
      'CONFIG_STATIC=y',
      'CONFIG_EXTRA_CFLAGS="-DX=\\"a b\\""',
      '',
    ].join('\n');
    const fragment = parseFragment(fragmentText, 'test.fragment');
    const merged = mergeFragment(defconfig, fragment);
    const configPath = join(tree, '.config');
    await writeFile(configPath, serializeConfig(merged));
    // oldconfig asks about nothing new here, but answer with defaults (Enter) anyway.
    await run(env, 'make', ['oldconfig'], { cwd: tree, input: '\n'.repeat(5000) });
    const final = parseConfig(await readFile(configPath, 'utf8'), configPath);

    expect(get(final, 'STATIC')).toEqual({ kind: 'bool', value: 'y' });
    expect(get(final, 'EXTRA_CFLAGS')).toEqual({ kind: 'string', value: '-DX="a b"' });
    const m = verifyFragment(final, fragment, deps);
    expect(m).toEqual([
      { symbol: 'FEATURE_INETD_RPC', wanted: 'y', final: describeValue(get(final, 'FEATURE_INETD_RPC')), reason: 'depends on INETD, and INETD is off', cause: 'depends' },
      {
        symbol: 'FEATURE_SH_MATH_64',
        wanted: 'y',
        final: describeValue(get(final, 'FEATURE_SH_MATH_64')),
        reason: 'depends on (SHELL_ASH || SHELL_HUSH) && FEATURE_SH_MATH, and FEATURE_SH_MATH is off',
        cause: 'depends',
      },
      { symbol: 'SHELL_ASH', wanted: 'not set', final: 'y', reason: 'selected by SH_IS_ASH and ASH', cause: 'select' },
      { symbol: 'NO_SUCH_OPTION', wanted: 'y', final: 'absent', reason: 'no such symbol in this busybox release', cause: 'no-such-symbol' },
    ]);
    expect(['not set', 'absent']).toContain(m[0]!.final);
    expect(formatMismatches(m).split('\n')[0]).toMatch(/^CONFIG_FEATURE_INETD_RPC: wanted y, got (not set|absent) — depends on INETD, and INETD is off$/);
  });
});
