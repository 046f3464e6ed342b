import { strict as assert } from 'node:assert';
import { test } from 'node:test';
import {
    checkServerInstalled,
    chooseInterpreter,
    describeInterpreter,
    installCommand,
    installMessage,
    interpretProbe,
    PROBE_MISSING,
    PROBE_SCRIPT,
    Runner,
    SERVER_ARGS,
    shellQuote,
} from '../../src/common/python';

const ctx = { home: '/home/u', workspaceFolder: '/ws' };

test('the setting wins over the Python extension', () => {
    assert.deepEqual(chooseInterpreter({ setting: '/opt/py/bin/python', pythonExtension: '/venv/bin/python', ctx }),
        { path: '/opt/py/bin/python', source: 'setting' });
});

test('the setting is expanded', () => {
    assert.equal(chooseInterpreter({ setting: '${workspaceFolder}/.venv/bin/python', ctx }).path, '/ws/.venv/bin/python');
    assert.equal(chooseInterpreter({ setting: '~/py/bin/python', ctx }).path, '/home/u/py/bin/python');
});

test('the Python extension is next', () => {
    assert.deepEqual(chooseInterpreter({ setting: '  ', pythonExtension: '/venv/bin/python', ctx }),
        { path: '/venv/bin/python', source: 'python-extension' });
});

test('python3 is the fallback', () => {
    assert.deepEqual(chooseInterpreter({ ctx }), { path: 'python3', source: 'default' });
    assert.deepEqual(chooseInterpreter({ setting: '', pythonExtension: '', ctx }), { path: 'python3', source: 'default' });
});

test('describeInterpreter names the source', () => {
    assert.match(describeInterpreter({ path: 'p', source: 'setting' }), /subcoder\.python/);
    assert.match(describeInterpreter({ path: 'p', source: 'python-extension' }), /Python extension/);
    assert.match(describeInterpreter({ path: 'p', source: 'default' }), /default/);
});

test('the server runs as a module', () => {
    assert.deepEqual([...SERVER_ARGS], ['-P', '-m', 'subcoder.pruner.cli', 'serve']);
});

test('install command quotes paths that need it', () => {
    assert.equal(installCommand('python3', 'linux'), 'python3 -m pip install subcoder');
    assert.equal(installCommand('/my env/bin/python', 'linux'), `'/my env/bin/python' -m pip install subcoder`);
    // PowerShell: a quoted program needs the call operator, and single quotes keep `$` and backticks literal.
    assert.equal(installCommand('C:\\My Env\\python.exe', 'win32'), "& 'C:\\My Env\\python.exe' -m pip install subcoder");
    assert.equal(installCommand('C:\\Python311\\python.exe', 'win32'), 'C:\\Python311\\python.exe -m pip install subcoder');
    assert.equal(installCommand("C:\\Users\\O'Brien $x\\python.exe", 'win32'), "& 'C:\\Users\\O''Brien $x\\python.exe' -m pip install subcoder");
    assert.equal(shellQuote(`it's`, 'linux'), `'it'\\''s'`);
});

test('the probe script is valid-looking Python that uses the missing code', () => {
    assert.match(PROBE_SCRIPT, /find_spec\("subcoder\.pruner\.cli"\)/);
    assert.match(PROBE_SCRIPT, new RegExp(`sys\\.exit\\(0 if found else ${PROBE_MISSING}\\)`));
});

test('probe results', () => {
    assert.deepEqual(interpretProbe('py', { code: 0, stderr: '' }), { kind: 'ok' });
    const missing = interpretProbe('/v/bin/python', { code: PROBE_MISSING, stderr: '' });
    assert.equal(missing.kind, 'missing-module');
    assert.match(installMessage(missing)!, /not installed in \/v\/bin\/python.*\/v\/bin\/python -m pip install subcoder/);
    const enoent = interpretProbe('nopython', { code: null, error: { code: 'ENOENT', message: 'spawn nopython ENOENT' }, stderr: '' });
    assert.deepEqual(enoent, { kind: 'no-interpreter', python: 'nopython', detail: 'not found' });
    assert.match(installMessage(enoent)!, /subcoder\.python/);
    const crashed = interpretProbe('py', { code: 1, stderr: 'Traceback\nSyntaxError: bad\n' });
    assert.deepEqual(crashed, { kind: 'probe-failed', python: 'py', detail: 'SyntaxError: bad' });
    assert.equal(installMessage({ kind: 'ok' }), undefined);
});

test('checkServerInstalled runs the probe with the interpreter', async () => {
    const calls: [string, string[]][] = [];
    const run: Runner = async (command, args) => {
        calls.push([command, args]);
        return { code: PROBE_MISSING, stderr: '' };
    };
    const state = await checkServerInstalled('/x/python', run);
    assert.equal(state.kind, 'missing-module');
    assert.deepEqual(calls, [['/x/python', ['-c', PROBE_SCRIPT]]]);
});
