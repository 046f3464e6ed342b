import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import {
    applyProgress,
    formatBytes,
    formatPercent,
    initialModel,
    ServerStatus,
    statusLines,
    statusView,
} from '../../src/common/status';

function withServer(server: ServerStatus) {
    const m = initialModel();
    m.client = 'running';
    m.server = server;
    return m;
}

test('formatting helpers', () => {
    assert.equal(formatPercent(0.5), '50%');
    assert.equal(formatPercent(0.333), '33%');
    assert.equal(formatPercent(undefined), '?%');
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(1536), '1.5 KB');
    assert.equal(formatBytes(135 * 1024 * 1024), '135 MB');
    assert.equal(formatBytes(null), 'unknown size');
});

test('starting before any report', () => {
    const v = statusView(initialModel());
    assert.equal(v.text, '$(loading~spin) Subcoder');
    assert.equal(v.command, 'subcoder.showLogs');
});

test('building shows language and percentage', () => {
    const v = statusView(withServer({ state: 'building', language: 'python', percent: 42.4 }));
    assert.equal(v.text, '$(loading~spin) Subcoder: building python 42%');
    assert.equal(v.severity, 'normal');
    assert.equal(v.command, 'subcoder.showStatus');
});

test('work-done progress drives the percentage', () => {
    const m = withServer({ state: 'base', language: 'python', model: 'smollm2-135m' });
    applyProgress(m, 'tok', { kind: 'begin', title: 'Building python sub-model', percentage: 0 });
    assert.equal(statusView(m).text, '$(loading~spin) Subcoder: building python 0%');
    applyProgress(m, 'tok', { kind: 'report', percentage: 60, message: 'layer 18/30' });
    const v = statusView(m);
    assert.equal(v.text, '$(loading~spin) Subcoder: building python 60%');
    assert.match(v.tooltip, /layer 18\/30/);
    assert.match(v.tooltip, /base model/);
    applyProgress(m, 'tok', { kind: 'report', message: 'saving' });
    assert.equal(statusView(m).text, '$(loading~spin) Subcoder: building python 60%');
    applyProgress(m, 'tok', { kind: 'end' });
    assert.equal(statusView(m).text, '$(circle-outline) Subcoder: base model');
});

test('percentages are clamped', () => {
    assert.equal(statusView(withServer({ state: 'building', language: 'go', percent: 140 })).text, '$(loading~spin) Subcoder: building go 100%');
    assert.equal(statusView(withServer({ state: 'building' })).text, '$(loading~spin) Subcoder: building');
});

test('the dense model at sparsity 0 is the steady state, not a stand-in', () => {
    const v = statusView(withServer({ state: 'base', sparsity: 0, model: 'qwen2.5-coder-0.5b' }));
    assert.equal(v.text, '$(check) Subcoder: dense model');
    assert.match(v.tooltip, /no sub-model is built/);
    assert.equal(statusView(withServer({ state: 'base', sparsity: 0.5 })).text, '$(circle-outline) Subcoder: base model');
});

test('ready shows language and sparsity', () => {
    const v = statusView(withServer({ state: 'ready', language: 'python', sparsity: 0.5, pattern: 'unstructured', model: 'smollm2-135m', sizeBytes: 100 * 1024 * 1024 }));
    assert.equal(v.text, '$(check) Subcoder: python · 50% sparse');
    assert.match(v.tooltip, /python sub-model of smollm2-135m \(50% sparse, 100 MB\)/);
});

test('ready with an N:M pattern names it', () => {
    assert.equal(statusView(withServer({ state: 'ready', language: 'rust', sparsity: 0.5, pattern: '2:4' })).text, '$(check) Subcoder: rust · 50% sparse, 2:4');
});

test('base, idle, detecting', () => {
    assert.equal(statusView(withServer({ state: 'base', model: 'm' })).text, '$(circle-outline) Subcoder: base model');
    assert.equal(statusView(withServer({ state: 'idle' })).text, '$(circle-slash) Subcoder: idle');
    assert.equal(statusView(withServer({ state: 'detecting' })).text, '$(loading~spin) Subcoder: detecting');
});

test('errors go to the logs, even during a build', () => {
    const m = withServer({ state: 'error', message: 'model failed to load' });
    applyProgress(m, 1, { kind: 'begin', title: 'x' });
    const v = statusView(m);
    assert.equal(v.text, '$(error) Subcoder: error');
    assert.equal(v.severity, 'error');
    assert.equal(v.command, 'subcoder.showLogs');
    assert.match(v.tooltip, /model failed to load/);
});

test('client problems win over the last server report', () => {
    const m = withServer({ state: 'ready', language: 'python', sparsity: 0.5 });
    m.client = 'stopped';
    m.problem = 'The server crashed.';
    assert.equal(statusView(m).text, '$(debug-disconnect) Subcoder: stopped');
    assert.match(statusView(m).tooltip, /crashed/);
    m.client = 'not-installed';
    assert.equal(statusView(m).text, '$(warning) Subcoder: not installed');
    assert.equal(statusView(m).severity, 'warning');
});

test('status lines list languages by share and the actions', () => {
    const lines = statusLines({
        state: 'ready', language: 'python', sparsity: 0.5, pattern: 'unstructured', model: 'smollm2-135m', sizeBytes: 2048,
        languages: [
            { language: 'javascript', share: 0.2, files: 1, bytes: 100 },
            { language: 'python', share: 0.8, files: 12, bytes: 4096 },
        ],
    });
    const text = lines.map((l) => `${l.label}|${l.description ?? ''}`);
    assert.deepEqual(text, [
        '$(pulse) State|ready',
        '$(server) Serving|python sub-model of smollm2-135m',
        '$(filter) Sparsity|50% (unstructured)',
        '$(database) Size|2.0 KB',
        'Detected languages|',
        '$(code) python|80% · 12 files, 4.0 KB',
        '$(code) javascript|20% · 1 file, 100 B',
        'Actions|',
        '$(circle-slash) Turn completions off|',
        '$(clock) Snooze for 30 minutes|',
        '$(symbol-namespace) Toggle completions for the current language|',
        '$(refresh) Rebuild sub-model|',
        '$(output) Show logs|',
        '$(debug-restart) Restart server|',
    ]);
    assert.deepEqual(lines.filter((l) => l.action).map((l) => l.action),
        ['subcoder.toggle', 'subcoder.snooze', 'subcoder.toggleLanguage', 'subcoder.rebuild', 'subcoder.showLogs', 'subcoder.restart']);
});

test('status lines while building on the base model, no languages', () => {
    const lines = statusLines({ state: 'building', language: 'go', percent: 30, model: 'smollm2-135m', languages: [] });
    assert.equal(lines[1].description, 'go 30%');
    assert.equal(lines[2].description, 'base model smollm2-135m');
    assert.ok(lines.some((l) => l.label === '$(info) none'));
});

test('a build can be cancelled from the status menu', () => {
    const actions = statusLines({ state: 'building', language: 'python', percent: 40 }).map((l) => l.action);
    assert.equal(actions.filter((a) => a)[0], 'subcoder.cancel');
    assert.ok(!statusLines({ state: 'ready', language: 'python' }).some((l) => l.action === 'subcoder.cancel'));
});

test('off and snoozed: the item says so, the menu turns them back on', () => {
    const m = withServer({ state: 'ready', language: 'python', sparsity: 0.5 });
    m.switches = { off: true };
    assert.equal(statusView(m).text, '$(circle-slash) Subcoder: off');
    m.switches = { off: false, snoozedUntil: 1000 + 30 * 60000 };
    assert.equal(statusView(m, 1000).text, '$(clock) Subcoder: snoozed 30 min');
    assert.match(statusView(m, 1000).tooltip, /snoozed for 30 more minutes/);
    assert.equal(statusView(m, 1000 + 30 * 60000).text, '$(check) Subcoder: python · 50% sparse', 'a snooze ends by itself');
    const lines = statusLines({ state: 'ready' }, m.switches, 1000);
    assert.ok(lines.some((l) => l.action === 'subcoder.toggle' && /Turn completions on/.test(l.label) && /30 min left/.test(l.description ?? '')));
    assert.ok(!lines.some((l) => l.action === 'subcoder.snooze'));
});

test('the tooltip shows the kernel and the last completion', () => {
    const m = withServer({ state: 'ready', language: 'python', sparsity: 0.5, kernel: 'off (needs an x86-64 CPU, this is arm64)' });
    m.last = { ms: 180, tokens: 12, inBudget: true };
    const tooltip = statusView(m).tooltip;
    assert.match(tooltip, /Sparse kernel: off \(needs an x86-64 CPU, this is arm64\)\./);
    assert.match(tooltip, /Last completion: 180 ms, 12 tokens\./);
    assert.ok(statusLines({ state: 'ready', kernel: 'on (AVX2 kernel)' }).some((l) => l.label === '$(chip) Sparse kernel' && l.description === 'on (AVX2 kernel)'));
});

test('a first download or conversion is shown as such, never as a build', () => {
    for (const state of ['downloading', 'converting'] as const) {
        const model = initialModel();
        model.client = 'running';
        model.server = { state, language: 'python', percent: 40, model: 'qwen2.5-coder-0.5b', message: null } as never;
        applyProgress(model, 'dl', { kind: 'begin', title: 'Downloading', percentage: 40 } as never);
        const view = statusView(model);
        assert.match(view.text, new RegExp(state));
        assert.doesNotMatch(view.text, /building/);
    }
});
