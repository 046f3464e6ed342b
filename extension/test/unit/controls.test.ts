import { strict as assert } from 'node:assert';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import {
    completionBlocked,
    CONTROL_DEFAULTS,
    debounce,
    DEFAULT_EXCLUDE,
    describeLast,
    excludedBy,
    otherProviders,
    otherProvidersMessage,
    readControls,
    snoozeMinutesLeft,
    subcoderLanguage,
} from '../../src/common/controls';

const packageJson = JSON.parse(readFileSync(path.join(__dirname, '..', '..', '..', 'package.json'), 'utf8'));
const contributed = packageJson.contributes;
const typing = { languageEnabled: true, path: '/ws/src/app.py', invoked: false, now: 1_000_000 };
const on = { off: false };

test('secrets are excluded by default, code is not', () => {
    for (const secret of ['/ws/.env', '/ws/.env.local', 'C:\\proj\\config\\.env.production', '/ws/certs/server.pem',
        '/ws/tls.key', '/home/u/.ssh/id_rsa', '/ws/.npmrc', '/ws/config/secrets.yaml', '/ws/CERT.PEM']) {
        assert.ok(excludedBy(secret, DEFAULT_EXCLUDE), `${secret} is not excluded`);
    }
    for (const code of ['/ws/src/app.py', '/ws/envelope.ts', '/ws/.envrc.d/x.go', '/ws/keys.py', '/ws/secrets.py', '/ws/env.ts']) {
        assert.equal(excludedBy(code, DEFAULT_EXCLUDE), undefined, `${code} is excluded`);
    }
});

test('globs: *, **, ?, braces, names without a folder', () => {
    assert.ok(excludedBy('/ws/gen/a/b/out.py', ['**/gen/**']));
    assert.ok(excludedBy('/ws/gen/out.py', ['gen/*.py']));
    assert.equal(excludedBy('/ws/gen/sub/out.py', ['gen/*.py']), undefined);
    assert.ok(excludedBy('/ws/a1.txt', ['a?.txt']));
    assert.ok(excludedBy('/ws/x.yml', ['*.{yaml,yml}']));
    assert.equal(excludedBy('/ws/x.json', ['*.{yaml,yml}', '']), undefined);
});

test('package.json defaults: the same exclude globs; plain text, Markdown and .env off', () => {
    assert.deepEqual(contributed.configuration.properties['subcoder.exclude'].default, DEFAULT_EXCLUDE);
    assert.equal(contributed.configuration.properties['subcoder.debounceMs'].default, CONTROL_DEFAULTS.debounceMs);
    assert.equal(contributed.configuration.properties['subcoder.requestBudgetMs'].default, CONTROL_DEFAULTS.requestBudgetMs);
    for (const language of ['[plaintext]', '[markdown]', '[dotenv]']) {
        assert.equal(contributed.configurationDefaults[language]['subcoder.enable'], false, language);
    }
});

test('partial accept is bound while ghost text shows', () => {
    const bound = contributed.keybindings.map((k: { command: string; when: string }) => [k.command, k.when]);
    assert.deepEqual(bound, [
        ['editor.action.inlineSuggest.acceptNextWord', 'inlineSuggestionVisible && !editorReadonly'],
        ['editor.action.inlineSuggest.acceptNextLine', 'inlineSuggestionVisible && !editorReadonly'],
    ]);
});

test('what blocks a request', () => {
    const c = readControls(() => undefined);
    assert.equal(completionBlocked(typing, c, on), undefined);
    assert.match(completionBlocked(typing, c, { off: true })!, /turned off/);
    assert.match(completionBlocked(typing, c, { off: false, snoozedUntil: typing.now + 1 })!, /snoozed/);
    assert.equal(completionBlocked(typing, c, { off: false, snoozedUntil: typing.now - 1 }), undefined, 'a snooze ends');
    assert.match(completionBlocked({ ...typing, languageEnabled: false }, c, on)!, /language/);
    assert.match(completionBlocked({ ...typing, path: '/ws/.env' }, c, on)!, /\*\*\/\.env/);
    assert.equal(completionBlocked({ ...typing, path: undefined }, c, on), undefined, 'untitled documents complete');
    const manual = readControls((k) => (k === 'trigger' ? 'manual' : undefined));
    assert.match(completionBlocked(typing, manual, on)!, /manual/);
    assert.equal(completionBlocked({ ...typing, invoked: true }, manual, on), undefined);
});

test('controls from settings: wrong values fall back, numbers are clamped', () => {
    assert.deepEqual(readControls(() => undefined), { ...CONTROL_DEFAULTS, exclude: [...DEFAULT_EXCLUDE] });
    const odd: Record<string, unknown> = { trigger: 'sometimes', debounceMs: -5, requestBudgetMs: 'slow', exclude: ['*.log', 3] };
    assert.deepEqual(readControls((k) => odd[k]), { trigger: 'automatic', debounceMs: 0, requestBudgetMs: 3000, exclude: ['*.log'] });
    assert.deepEqual(readControls((k) => (k === 'exclude' ? [] : undefined)).exclude, [], 'an empty list excludes nothing');
});

test('snooze minutes left', () => {
    assert.equal(snoozeMinutesLeft({ off: false }, 0), 0);
    assert.equal(snoozeMinutesLeft({ off: false, snoozedUntil: 30 * 60000 }, 0), 30);
    assert.equal(snoozeMinutesLeft({ off: false, snoozedUntil: 30 * 60000 }, 29 * 60000 + 1), 1);
    assert.equal(snoozeMinutesLeft({ off: false, snoozedUntil: 30 * 60000 }, 30 * 60000), 0);
});

test('debounce: waits, or gives up when the user types on', async () => {
    assert.equal(await debounce(0, () => undefined), true);
    assert.equal(await debounce(5, () => undefined), true);
    let cancel: () => void = () => undefined;
    const waiting = debounce(10_000, (l) => (cancel = l));
    cancel();
    assert.equal(await waiting, false);
});

test('the last completion, for the tooltip', () => {
    assert.equal(describeLast(undefined), undefined);
    assert.equal(describeLast({ ms: 212, tokens: 14, inBudget: true }), 'Last completion: 212 ms, 14 tokens.');
    assert.equal(describeLast({ ms: 90, tokens: 1, inBudget: true }), 'Last completion: 90 ms, 1 token.');
    assert.match(describeLast({ ms: 3000, inBudget: false })!, /cut off at the 3000 ms budget/);
});

test('other inline providers are named once, with how to choose', () => {
    assert.deepEqual(otherProviders(['ms-python.python', 'github.copilot', 'TabbyML.vscode-tabby']), ['GitHub Copilot', 'Tabby']);
    assert.equal(otherProvidersMessage([]), undefined);
    const message = otherProvidersMessage(['GitHub Copilot', 'Tabby'])!;
    assert.match(message, /GitHub Copilot and Tabby also show ghost text/);
    assert.match(message, /status-bar menu/);
});

test('VS Code language ids map to the languages sub-models are built for', () => {
    assert.equal(subcoderLanguage('typescriptreact'), 'typescript');
    assert.equal(subcoderLanguage('c'), 'cpp');
    assert.equal(subcoderLanguage('python'), 'python');
    assert.equal(subcoderLanguage('markdown'), undefined);
});
