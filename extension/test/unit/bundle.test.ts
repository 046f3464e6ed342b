/**
 * Loads the built bundle (dist/extension.js) against a stub `vscode` module and activates it with a
 * missing interpreter: catches a broken import or name in the shipped file, and checks that the
 * palette commands declared in package.json are the ones the extension registers.
 */
import { strict as assert } from 'node:assert';
import { existsSync, readFileSync } from 'node:fs';
import Module from 'node:module';
import * as path from 'node:path';
import { test } from 'node:test';

const root = path.join(__dirname, '..', '..', '..');
const bundle = path.join(root, 'dist', 'extension.js');

interface Recorded {
    commands: string[];
    errors: string[];
    statusTexts: string[];
    infos: string[];
}

function stubVscode(rec: Recorded): unknown {
    const disposable = { dispose() {} };
    const event = () => disposable;
    class ThemeColor { constructor(readonly id: string) {} }
    const channel = new Proxy({}, { get: (_t, p) => (p === 'logLevel' ? 2 : p === 'onDidChangeLogLevel' ? event : () => undefined) });
    const known: Record<string, unknown> = {
        workspace: {
            getConfiguration: () => ({ get: (key: string, dflt?: unknown) => (key === 'python' ? '/nonexistent/bin/python' : dflt) }),
            onDidChangeConfiguration: event,
            workspaceFolders: undefined,
        },
        window: {
            createOutputChannel: () => channel,
            createStatusBarItem: () => {
                const item: Record<string, unknown> = { show() {}, dispose() {} };
                return new Proxy(item, { set: (t, p, v) => { if (p === 'text') { rec.statusTexts.push(v); } t[p as string] = v; return true; } });
            },
            showErrorMessage: async (m: string) => { rec.errors.push(m); return undefined; },
            showWarningMessage: async () => undefined,
            showInformationMessage: async (m: string) => { rec.infos.push(m); return undefined; },
        },
        commands: { registerCommand: (id: string) => { rec.commands.push(id); return disposable; } },
        extensions: { getExtension: () => undefined, onDidChange: event, all: [{ id: 'GitHub.copilot' }, { id: 'ms-python.python' }] },
        StatusBarAlignment: { Left: 1, Right: 2 },
        ThemeColor,
        Disposable: class { static from() { return disposable; } dispose() {} },
        EventEmitter: class { event = event; fire() {} dispose() {} },
    };
    // The language client subclasses and enumerates many API classes at load time; anything not
    // stubbed above is an empty class, which serves both uses.
    return new Proxy(known, { get: (t, p: string) => (p in t ? t[p] : (t[p] = class {})) });
}

test('the bundle loads, activates without a server and registers the declared commands', { skip: !existsSync(bundle) && 'run `npm run build` first' }, async () => {
    const rec: Recorded = { commands: [], errors: [], statusTexts: [], infos: [] };
    const stub = stubVscode(rec);
    const loader = Module as unknown as { _load: (request: string, ...rest: unknown[]) => unknown };
    const original = loader._load;
    loader._load = (request: string, ...rest: unknown[]) => (request === 'vscode' ? stub : original(request, ...rest));
    try {
        const ext = require(bundle);
        assert.equal(typeof ext.activate, 'function');
        assert.equal(typeof ext.deactivate, 'function');
        const state = new Map<string, unknown>();
        const globalState = { get: (k: string, d?: unknown) => (state.has(k) ? state.get(k) : d), update: async (k: string, v: unknown) => void state.set(k, v) };
        const context = { subscriptions: [] as unknown[], extension: { packageJSON: { version: '0.0.0' } }, globalState };
        await ext.activate(context);
        await ext.deactivate();
    } finally {
        loader._load = original;
    }
    const declared = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')).contributes.commands.map((c: { command: string }) => c.command);
    assert.deepEqual([...rec.commands].sort(), [...declared].sort());
    assert.equal(rec.statusTexts.at(-1), '$(warning) Subcoder: not installed');
    assert.equal(rec.errors.length, 1);
    assert.match(rec.errors[0], /cannot run Python interpreter \/nonexistent\/bin\/python/);
    // Another inline provider is installed: the user is told once how to choose.
    assert.equal(rec.infos.filter((m) => /GitHub Copilot also shows ghost text/.test(m)).length, 1);
});
