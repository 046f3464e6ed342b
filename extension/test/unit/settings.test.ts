import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import {
    classifyChange,
    CLIENT_KEYS,
    expandPath,
    initializationOptions,
    SERVER_DEFAULTS,
    SERVER_KEYS,
    serverSettings,
} from '../../src/common/settings';
import { RUNTIME_KEYS } from '../../src/common/runtime';

const ctx = { home: '/home/u', workspaceFolder: '/ws' };
const packageJson = JSON.parse(readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));
const contributed: Record<string, { default: unknown; enum?: unknown[] }> = packageJson.contributes.configuration.properties;

test('defaults follow the LSP contract', () => {
    assert.deepEqual({ ...SERVER_DEFAULTS }, {
        model: '', sparsity: 0, pattern: 'unstructured', values: 'bf16', method: 'wanda',
        calibration: 'corpus', mixRatio: 0.5,
        languages: ['python', 'java', 'cpp', 'javascript', 'typescript', 'go', 'rust'],
        device: 'cpu', dtype: 'auto', maxNewTokens: 48, completionMode: 'auto', fimOrder: 'psm', cacheDir: '',
        cacheSizeLimitMB: 4096, logLevel: 'info', sparseKernel: true, serveBaseModelWhileBuilding: true,
        contextTokens: 1024, suffixTokens: 0, calibrationSamples: 32, calibrationSeqLen: 512,
        allowDownload: 'ask', backend: '', backendTimeout: 10,
    });
    const user: Record<string, unknown> = { allowDownload: true };
    assert.equal(serverSettings((k) => user[k], ctx).allowDownload, true, 'allowDownload is "ask" or a boolean');
});

test('package.json declares every server setting with the same default', () => {
    for (const key of SERVER_KEYS) {
        const decl = contributed[`subcoder.${key}`];
        assert.ok(decl, `subcoder.${key} missing from package.json`);
        assert.deepEqual(decl.default, SERVER_DEFAULTS[key], `default of subcoder.${key}`);
        if (decl.enum) {
            assert.ok(decl.enum.includes(decl.default), `default of subcoder.${key} is one of its values`);
        }
    }
});

test('package.json offers exactly the default languages', () => {
    const items = (contributed['subcoder.languages'] as unknown as { items: { enum: string[] } }).items;
    assert.deepEqual(items.enum, SERVER_DEFAULTS.languages);
});

test('package.json declares nothing the mapping does not know', () => {
    const known = new Set([...SERVER_KEYS, ...CLIENT_KEYS, ...RUNTIME_KEYS].map((k) => `subcoder.${k}`));
    assert.deepEqual(Object.keys(contributed).filter((k) => !known.has(k)), []);
});

test('unset settings become the defaults', () => {
    assert.deepEqual(serverSettings(() => undefined, ctx), { ...SERVER_DEFAULTS, languages: [...SERVER_DEFAULTS.languages] });
});

test('user values pass through', () => {
    const user: Record<string, unknown> = { sparsity: 0.7, pattern: '2:4', languages: ['python', 'rust'], sparseKernel: false };
    const s = serverSettings((k) => user[k], ctx);
    assert.equal(s.sparsity, 0.7);
    assert.equal(s.pattern, '2:4');
    assert.deepEqual(s.languages, ['python', 'rust']);
    assert.equal(s.sparseKernel, false);
    assert.equal(s.maxNewTokens, 48);
});

test('wrong types fall back to the default and are reported', () => {
    const user: Record<string, unknown> = { sparsity: 'high', languages: [1, 2], maxNewTokens: Number.NaN };
    const problems: string[] = [];
    const s = serverSettings((k) => user[k], ctx, problems);
    assert.equal(s.sparsity, SERVER_DEFAULTS.sparsity);
    assert.deepEqual(s.languages, SERVER_DEFAULTS.languages);
    assert.equal(s.maxNewTokens, 48);
    assert.equal(problems.length, 3);
    assert.match(problems[0], /subcoder\.sparsity/);
});

test('the returned list is a copy', () => {
    const langs = ['python'];
    const s = serverSettings((k) => (k === 'languages' ? langs : undefined), ctx);
    s.languages.push('go');
    assert.deepEqual(langs, ['python']);
});

test('paths are expanded in cacheDir and model', () => {
    const user: Record<string, unknown> = { cacheDir: '~/cache', model: '${workspaceFolder}/models/tiny' };
    const s = serverSettings((k) => user[k], ctx);
    assert.equal(s.cacheDir, '/home/u/cache');
    assert.equal(s.model, '/ws/models/tiny');
});

test('expandPath', () => {
    assert.equal(expandPath('~', ctx), '/home/u');
    assert.equal(expandPath(' ~/x ', ctx), '/home/u/x');
    assert.equal(expandPath('a~/x', ctx), 'a~/x');
    assert.equal(expandPath('${userHome}/y', ctx), '/home/u/y');
    assert.equal(expandPath('${workspaceFolder}/z', { home: '/h' }), '${workspaceFolder}/z');
    assert.equal(expandPath('smollm2-135m', ctx), 'smollm2-135m');
});

test('initializationOptions carry the section under its name', () => {
    const s = serverSettings(() => undefined, ctx);
    assert.deepEqual(initializationOptions(s), { subcoder: s });
});

test('classifyChange', () => {
    const changed = (...keys: string[]) => (k: string) => keys.some((c) => c === k || c.startsWith(`${k}.`));
    assert.equal(classifyChange(changed('editor.fontSize')), 'none');
    assert.equal(classifyChange(changed('subcoder.python')), 'restart');
    assert.equal(classifyChange(changed('subcoder.sparsity')), 'forward');
    assert.equal(classifyChange(changed('subcoder.enable')), 'client');
    assert.equal(classifyChange(changed('subcoder.python', 'subcoder.model')), 'restart');
});
