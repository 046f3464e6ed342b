import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import {
    bundledWheel,
    CHECK_SCRIPT,
    choosePython,
    DEFAULT_TORCH,
    failureLine,
    installSteps,
    judgeProbe,
    MARKER_FORMAT,
    markerMismatch,
    parseMarker,
    pipStage,
    PythonCommand,
    pythonCandidates,
    RunResult,
    runtimeSettings,
    venvPython,
} from '../../src/common/runtime';
import { childEnv, installRuntime, packageToInstall, RuntimeEnv, runtimePaths, runtimeState } from '../../src/common/runtimeInstall';

const ok = (stdout: string): RunResult => ({ code: 0, stdout, stderr: '' });
const probe = (version: number[], venv = true, executable = '/usr/bin/python3') =>
    ok(`${JSON.stringify({ version, executable, venv })}\n`);
const py3: PythonCommand = { command: 'python3', args: [] };

test('candidates: the default Python first, then versioned names, then the Python extension', () => {
    assert.deepEqual(pythonCandidates('linux').map((c) => c.command), ['python3', 'python', 'python3.13', 'python3.12', 'python3.11']);
    assert.deepEqual(pythonCandidates('win32').map((c) => [c.command, ...c.args].join(' ')), ['py -3', 'python', 'py -3.13', 'py -3.12', 'py -3.11']);
    assert.deepEqual(pythonCandidates('darwin', ' /proj/.venv/bin/python ').at(-1), { command: '/proj/.venv/bin/python', args: [] });
});

test('a probe is judged by version and by whether venv works', () => {
    assert.equal(judgeProbe(py3, probe([3, 11, 2])).kind, 'fits');
    assert.deepEqual(judgeProbe(py3, probe([3, 12, 0], true, '/opt/py/bin/python3')),
        { kind: 'fits', found: { python: py3, version: [3, 12, 0], executable: '/opt/py/bin/python3' } });
    assert.deepEqual(judgeProbe(py3, probe([3, 10, 12])), { kind: 'rejected', executable: '/usr/bin/python3', why: '3.10.12, too old' });
    assert.deepEqual(judgeProbe(py3, probe([2, 7, 18])), { kind: 'rejected', executable: '/usr/bin/python3', why: '2.7.18, too old' });
    const noVenv = judgeProbe(py3, probe([3, 11, 2], false));
    assert.equal(noVenv.kind, 'rejected');
    assert.match(noVenv.kind === 'rejected' ? noVenv.why : '', /without the venv module.*python3\.11-venv/);
});

test('a candidate that is not there, or fails when run, says how', () => {
    assert.deepEqual(judgeProbe(py3, { code: null, error: { code: 'ENOENT', message: 'spawn python3 ENOENT' }, stdout: '', stderr: '' }),
        { kind: 'rejected', why: 'not found' });
    // A pyenv shim for a version that is not installed exists on PATH and exits 127.
    const shim = judgeProbe({ command: 'python3.13', args: [] }, { code: 127, stdout: '', stderr: 'pyenv: python3.13: command not found\n\nThe `python3.13\' command exists in these Python versions:\n  3.13.1\n' });
    assert.deepEqual(shim, { kind: 'rejected', why: 'pyenv: python3.13: command not found' });
    assert.deepEqual(judgeProbe(py3, { code: 0, stdout: 'not json', stderr: '' }), { kind: 'rejected', why: 'exit status 0' });
});

test('the first fitting candidate is chosen', () => {
    const chosen = choosePython([
        { python: py3, outcome: judgeProbe(py3, probe([3, 9, 2])) },
        { python: { command: 'python3.12', args: [] }, outcome: judgeProbe(py3, probe([3, 12, 1], true, '/usr/bin/python3.12')) },
    ]);
    assert.equal(chosen.kind, 'found');
    assert.deepEqual(chosen.kind === 'found' && chosen.found.version, [3, 12, 1]);
});

test('when none fits, the message names what was found once each and what is needed', () => {
    const chosen = choosePython([
        { python: py3, outcome: judgeProbe(py3, probe([3, 9, 2])) },
        { python: { command: 'python', args: [] }, outcome: judgeProbe(py3, probe([3, 9, 2])) },
        { python: { command: 'python3.11', args: [] }, outcome: { kind: 'rejected', why: 'not found' } },
    ]);
    assert.equal(chosen.kind, 'none');
    const message = chosen.kind === 'none' ? chosen.message : '';
    assert.match(message, /needs Python 3\.11 or newer/);
    assert.match(message, /python3: 3\.9\.2, too old; python3\.11: not found\./);
    assert.doesNotMatch(message, /python: 3\.9\.2/);
    assert.match(message, /subcoder\.python/);
});

test('the venv interpreter per platform', () => {
    assert.equal(venvPython('/s/runtime', 'linux'), '/s/runtime/bin/python');
    assert.equal(venvPython('C:\\s\\runtime', 'win32'), 'C:\\s\\runtime\\Scripts\\python.exe');
});

test('settings: defaults, trimmed values, ~ expanded in the package path', () => {
    assert.deepEqual(runtimeSettings(() => undefined), { package: '', torch: DEFAULT_TORCH, extraIndexUrl: '' });
    const user: Record<string, unknown> = { 'runtime.package': ' ~/w/subcoder.whl ', 'runtime.torch': '  ', 'runtime.extraIndexUrl': 7 };
    assert.deepEqual(runtimeSettings((k) => user[k], (p) => p.replace(/^~/, '/home/u')),
        { package: '/home/u/w/subcoder.whl', torch: DEFAULT_TORCH, extraIndexUrl: '' });
});

test('exactly one bundled subcoder wheel is used', () => {
    assert.equal(bundledWheel(['extension.js', 'subcoder-0.1.0-py3-none-any.whl']), 'subcoder-0.1.0-py3-none-any.whl');
    assert.equal(bundledWheel(['extension.js']), undefined);
    assert.equal(bundledWheel(['subcoder-0.1.0-py3-none-any.whl', 'subcoder-0.2.0-py3-none-any.whl']), undefined);
});

test('install steps: venv, torch alone and pinned, subcoder with torch named again, the check', () => {
    const settings = { package: '', torch: 'torch==2.13.0', extraIndexUrl: 'https://example.invalid/cpu' };
    const steps = installSteps({ base: { command: 'py', args: ['-3.12'] }, venvDir: '/s/runtime', createVenv: true, platform: 'linux', settings, packageSpec: '/ext/dist/subcoder.whl' });
    assert.deepEqual(steps.map((s) => s.title), ['Creating the virtual environment', 'Installing torch (CPU build)', 'Installing subcoder and its dependencies', 'Checking the runtime']);
    assert.deepEqual([steps[0].command, ...steps[0].args], ['py', '-3.12', '-m', 'venv', '/s/runtime']);
    assert.ok(steps.slice(1).every((s) => s.command === '/s/runtime/bin/python'));
    assert.deepEqual(steps[1].args.slice(-3), ['--extra-index-url', 'https://example.invalid/cpu', 'torch==2.13.0']);
    assert.deepEqual(steps[2].args.slice(-2), ['/ext/dist/subcoder.whl', 'torch==2.13.0']);
    assert.ok(!steps[2].args.includes('--extra-index-url'));
    assert.deepEqual(steps[3].args, ['-P', '-c', CHECK_SCRIPT]);
    assert.equal(steps.reduce((n, s) => n + s.weight, 0), 100);
    const update = installSteps({ base: { command: 'python3', args: [] }, venvDir: '/s/runtime', createVenv: false, platform: 'linux', settings: { ...settings, extraIndexUrl: '' }, packageSpec: 'x' });
    assert.equal(update.length, 3);
    assert.ok(!update[0].args.includes('--extra-index-url'));
    assert.equal(update.reduce((n, s) => n + s.weight, 0), 100);
});

test("pip's output lines become short stages", () => {
    assert.equal(pipStage('Collecting torch==2.13.0'), 'collecting torch==2.13.0');
    assert.equal(pipStage('  Downloading torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl (190.2 MB)'),
        'downloading torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl (190.2 MB)');
    assert.equal(pipStage('Processing /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl'), 'reading torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl');
    assert.equal(pipStage('Installing collected packages: mpmath, sympy, torch'), 'installing 3 packages');
    assert.equal(pipStage('Installing collected packages: subcoder'), 'installing subcoder');
    assert.equal(pipStage('Requirement already satisfied: torch==2.13.0 in /s/runtime/lib/python3.11/site-packages (2.13.0+cpu)'), 'torch==2.13.0 already there');
    assert.equal(pipStage('Successfully installed subcoder-0.1.0 torch-2.13.0+cpu'), 'installed');
    assert.equal(pipStage("WARNING: Location 'file:///opt/pypi-more/simple/mdurl/' is ignored"), undefined);
});

test("a failed step's line to show is pip's error", () => {
    assert.equal(failureLine('Collecting torch==9.9\nERROR: Could not find a version that satisfies the requirement torch==9.9\nERROR: No matching distribution found for torch==9.9\n'),
        'ERROR: Could not find a version that satisfies the requirement torch==9.9');
    assert.equal(failureLine('Traceback (most recent call last):\n  File "<string>", line 1\nModuleNotFoundError: No module named \'torch\'\n'), "ModuleNotFoundError: No module named 'torch'");
    assert.equal(failureLine(''), 'no output');
});

test('the marker decides whether the runtime is the one wanted', () => {
    const marker = { format: MARKER_FORMAT, package: 'subcoder-0.1.0.whl sha256:aa', torch: 'torch==2.13.0', python: '3.11.2 /usr/bin/python3', installed: 'x' };
    assert.equal(markerMismatch(marker, { package: 'subcoder-0.1.0.whl sha256:aa', torch: 'torch==2.13.0' }), undefined);
    assert.match(markerMismatch(marker, { package: 'subcoder-0.1.0.whl sha256:bb', torch: 'torch==2.13.0' })!, /subcoder changed/);
    assert.match(markerMismatch(marker, { package: marker.package, torch: 'torch==2.12.0' })!, /torch requirement changed/);
    assert.match(markerMismatch({ ...marker, format: 0 }, { package: marker.package, torch: marker.torch })!, /layout/);
    assert.match(markerMismatch(undefined, { package: '', torch: '' })!, /no runtime/);
    assert.deepEqual(parseMarker(JSON.stringify(marker)), marker);
    assert.equal(parseMarker('{"format": 1}'), undefined);
    assert.equal(parseMarker('not json'), undefined);
});

test('the install environment drops what would send pip or Python elsewhere', () => {
    const env = childEnv({ PATH: '/bin', PYTHONPATH: '/ws', PIP_USER: '1', VIRTUAL_ENV: '/proj/.venv', PIP_INDEX_URL: 'file:///idx' });
    assert.equal(env.PYTHONPATH, undefined);
    assert.equal(env.PIP_USER, undefined);
    assert.equal(env.VIRTUAL_ENV, undefined);
    assert.equal(env.PATH, '/bin');
    // The user's index configuration stays: it is how pip reaches packages on their network.
    assert.equal(env.PIP_INDEX_URL, 'file:///idx');
    assert.equal(env.PYTHONNOUSERSITE, '1');
});

/**
 * A wheel named subcoder holding the two modules the check imports (a stand-in torch and
 * subcoder.pruner.cli): the real installer runs against it in seconds instead of minutes.
 */
function standInWheel(dir: string): string {
    const file = path.join(dir, 'subcoder-0.0.1-py3-none-any.whl');
    const script = [
        'import sys, zipfile',
        'files = {"torch/__init__.py": "__version__ = \'stand-in\'\\n", "subcoder/pruner/__init__.py": "", "subcoder/pruner/cli.py": "",',
        '  "subcoder-0.0.1.dist-info/METADATA": "Metadata-Version: 2.1\\nName: subcoder\\nVersion: 0.0.1\\n",',
        '  "subcoder-0.0.1.dist-info/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}',
        'files["subcoder-0.0.1.dist-info/RECORD"] = "".join(f"{n},,\\n" for n in [*files, "subcoder-0.0.1.dist-info/RECORD"])',
        'with zipfile.ZipFile(sys.argv[1], "w") as z:',
        '    [z.writestr(n, t) for n, t in files.items()]',
    ].join('\n');
    const made = spawnSync('python3', ['-c', script, file]);
    assert.equal(made.status, 0, String(made.stderr));
    return file;
}

const hasPython = spawnSync('python3', ['-c', 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))']).status === 0;

test('the installer: a failing step leaves its error line and the log; the next attempt reuses the venv and ends ready', { skip: !hasPython && 'needs python3 >= 3.11 with venv', timeout: 300000 }, async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'subcoder-runtime-test-'));
    try {
        const bundleDir = path.join(dir, 'dist');
        fs.mkdirSync(bundleDir);
        standInWheel(bundleDir);
        const env: RuntimeEnv = { storageDir: path.join(dir, 'storage'), bundleDir, platform: process.platform, settings: { package: '', torch: 'torhc==2.13.0', extraIndexUrl: '' } };
        const paths = runtimePaths(env.storageDir, env.platform);
        assert.equal((await runtimeState(env)).kind, 'absent');
        // A lock left by a window that is gone does not block the install.
        fs.mkdirSync(env.storageDir);
        fs.writeFileSync(paths.lock, '999999999');

        // A misspelt torch requirement: the venv is made, the torch step fails with pip's own words.
        const failed = await installRuntime(env, { progress: () => undefined });
        assert.ok(failed.kind === 'failed' && /^Installing torch \(CPU build\) failed: ERROR: .*torhc==2\.13\.0/.test(failed.message), JSON.stringify(failed));
        assert.ok(failed.kind === 'failed' && failed.log === paths.log);
        assert.match(fs.readFileSync(paths.log, 'utf8'), /== failed: Installing torch/);
        assert.equal(fs.existsSync(paths.marker), false);
        assert.equal(fs.existsSync(paths.lock), false);
        assert.equal((await runtimeState(env)).kind, 'absent');

        // `pip` as the torch requirement: already satisfied in a venv, so nothing is fetched.
        env.settings.torch = 'pip';
        const messages: string[] = [];
        let total = 0;
        const outcome = await installRuntime(env, { progress: (m, inc) => { messages.push(m); total += inc; } });
        assert.deepEqual(outcome, { kind: 'ready', python: paths.python });
        assert.equal(total, 100);
        assert.ok(!messages.includes('Creating the virtual environment'), 'the venv is reused');
        assert.ok(messages.includes('Installing torch (CPU build): pip already there'), messages.join('\n'));
        assert.ok(messages.includes('Installing subcoder and its dependencies: installing subcoder'), messages.join('\n'));
        assert.match(fs.readFileSync(paths.log, 'utf8'), /torch stand-in\n== ready/);
        assert.deepEqual(await runtimeState(env), { kind: 'ready', python: paths.python });

        // Another wheel (an extension update) makes it outdated; a missing wheel is one clear line.
        const pkg = await packageToInstall(env);
        assert.ok(!('error' in pkg) && /^subcoder-0\.0\.1-py3-none-any\.whl sha256:[0-9a-f]{64}$/.test(pkg.identity));
        fs.appendFileSync(path.join(bundleDir, 'subcoder-0.0.1-py3-none-any.whl'), 'x');
        assert.equal((await runtimeState(env)).kind, 'outdated');
        fs.rmSync(path.join(bundleDir, 'subcoder-0.0.1-py3-none-any.whl'));
        const missing = await packageToInstall(env);
        assert.ok('error' in missing && /no subcoder wheel is bundled/.test(missing.error));
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
});
