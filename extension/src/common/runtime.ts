/**
 * The managed Python runtime: a virtual environment in the extension's global storage holding torch
 * (CPU build) and the subcoder wheel shipped inside the .vsix. This module is the pure part: which
 * interpreters to try and which one fits, the install steps, pip's output as progress stages, and
 * the marker that says a runtime is complete. runtimeInstall.ts runs it; runtimeUi.ts shows it.
 */
import * as path from 'path';

/** Oldest Python the subcoder package supports (pyproject's requires-python). */
export const MIN_PYTHON: readonly [number, number] = [3, 11];
/**
 * Pinned rather than a range: an open range lets pip pick a multi-GB CUDA build where the index has
 * one. 2.13.0 is the newest version the subcoder wheel accepts.
 */
export const DEFAULT_TORCH = 'torch==2.13.0';
/** Written last, so a venv without it is an unfinished install. Bumped when the layout changes. */
export const MARKER_NAME = 'subcoder-runtime.json';
export const MARKER_FORMAT = 1;
export const VENV_DIR = 'runtime';
export const LOG_NAME = 'runtime-install.log';

/** An interpreter to try: a command and the arguments that select a version (`py -3.12`). */
export interface PythonCommand {
    command: string;
    args: string[];
}

export function describeCommand(c: PythonCommand): string {
    return [c.command, ...c.args].join(' ');
}

/**
 * Interpreters to create the venv from, in order: the user's default Python first (the one they
 * maintain), then versioned names for when the default is too old, then the Python extension's
 * selection (possibly a project venv: `venv` builds from its base interpreter, so nothing of the
 * project leaks in).
 */
export function pythonCandidates(platform: string, fromPythonExtension?: string): PythonCommand[] {
    const versioned = ['3.13', '3.12', '3.11'];
    const list: PythonCommand[] = platform === 'win32'
        ? [{ command: 'py', args: ['-3'] }, { command: 'python', args: [] },
            ...versioned.map((v) => ({ command: 'py', args: [`-${v}`] }))]
        : [{ command: 'python3', args: [] }, { command: 'python', args: [] },
            ...versioned.map((v) => ({ command: `python${v}`, args: [] }))];
    if (fromPythonExtension?.trim()) {
        list.push({ command: fromPythonExtension.trim(), args: [] });
    }
    return list;
}

/** `python -c VERSION_PROBE` prints one JSON line: version, executable, and whether venv can work. */
export const VERSION_PROBE =
    'import importlib.util, json, sys\n' +
    // Debian and Ubuntu split ensurepip off into pythonX.Y-venv; without it `-m venv` fails.
    'venv = all(importlib.util.find_spec(m) is not None for m in ("venv", "ensurepip"))\n' +
    'print(json.dumps({"version": list(sys.version_info[:3]), "executable": sys.executable, "venv": venv}))\n';

export interface RunResult {
    /** Exit status; null when the process could not start or was killed. */
    code: number | null;
    /** Error from starting the process (ENOENT: no such command). */
    error?: { code?: string; message: string };
    stdout: string;
    stderr: string;
}

export interface ProbedPython {
    python: PythonCommand;
    version: [number, number, number];
    executable: string;
}

/** What one candidate turned out to be, in words for the message when none fits. */
export type ProbeOutcome =
    | { kind: 'fits'; found: ProbedPython }
    | { kind: 'rejected'; executable?: string; why: string };

export function versionText(v: readonly number[]): string {
    return v.join('.');
}

export function judgeProbe(python: PythonCommand, result: RunResult): ProbeOutcome {
    if (result.error) {
        return { kind: 'rejected', why: result.error.code === 'ENOENT' ? 'not found' : result.error.message };
    }
    const line = result.stdout.trim().split('\n').pop() ?? '';
    let parsed: { version?: unknown; executable?: unknown; venv?: unknown };
    try {
        parsed = result.code === 0 ? JSON.parse(line) : {};
    } catch {
        parsed = {};
    }
    const version = parsed.version;
    if (!Array.isArray(version) || version.length !== 3 || !version.every((n) => Number.isInteger(n))) {
        // pyenv shims and Windows' store alias exist on PATH and fail when run: say how they failed.
        const lines = result.stderr.split('\n').map((l) => l.trim()).filter(Boolean);
        const why = lines.find((l) => /error|not found|no such/i.test(l)) ?? lines.pop();
        return { kind: 'rejected', why: why || `exit status ${result.code}` };
    }
    const v = version as [number, number, number];
    const executable = typeof parsed.executable === 'string' ? parsed.executable : undefined;
    if (v[0] < MIN_PYTHON[0] || (v[0] === MIN_PYTHON[0] && v[1] < MIN_PYTHON[1])) {
        return { kind: 'rejected', executable, why: `${versionText(v)}, too old` };
    }
    if (parsed.venv !== true) {
        const debian = `python${v[0]}.${v[1]}-venv`;
        return { kind: 'rejected', executable, why: `${versionText(v)} without the venv module (on Debian/Ubuntu: install ${debian})` };
    }
    return { kind: 'fits', found: { python, version: v, executable: executable ?? python.command } };
}

export type PythonChoice = { kind: 'found'; found: ProbedPython } | { kind: 'none'; message: string };

/** The first candidate that fits, or a message naming what each candidate was and what is needed. */
export function choosePython(probed: { python: PythonCommand; outcome: ProbeOutcome }[]): PythonChoice {
    const fits = probed.find((p) => p.outcome.kind === 'fits');
    if (fits && fits.outcome.kind === 'fits') {
        return { kind: 'found', found: fits.outcome.found };
    }
    const seen = new Set<string>();
    const found: string[] = [];
    for (const { python, outcome } of probed) {
        if (outcome.kind !== 'rejected') {
            continue;
        }
        // python3 and python3.11 are often one binary: name it once.
        const key = outcome.executable ?? describeCommand(python);
        if (seen.has(key)) {
            continue;
        }
        seen.add(key);
        found.push(`${describeCommand(python)}: ${outcome.why}`);
    }
    return {
        kind: 'none',
        message: `Subcoder needs Python ${versionText(MIN_PYTHON)} or newer to set up its runtime; found ${found.join('; ')}. ` +
            'Install Python 3.11+ on PATH, or set "subcoder.python" to an interpreter that has subcoder installed.',
    };
}

export function venvPython(venvDir: string, platform: string): string {
    return platform === 'win32' ? path.win32.join(venvDir, 'Scripts', 'python.exe') : path.posix.join(venvDir, 'bin', 'python');
}

/** The runtime's settings (`subcoder.runtime.*`, machine-scoped: a workspace cannot make pip install something else). */
export const RUNTIME_KEYS = ['runtime.package', 'runtime.torch', 'runtime.extraIndexUrl'] as const;

export interface RuntimeSettings {
    /** Empty: the wheel bundled in the extension; else a wheel file, a project folder, or a requirement. */
    package: string;
    torch: string;
    /** An extra index for torch (e.g. the PyTorch project's CPU-only index); empty: pip's own configuration. */
    extraIndexUrl: string;
}

/** `expand` resolves `~` in a package path. */
export function runtimeSettings(get: (key: string) => unknown, expand: (p: string) => string = (p) => p): RuntimeSettings {
    const text = (key: string, fallback: string) => {
        const v = get(key);
        return typeof v === 'string' && v.trim() ? v.trim() : fallback;
    };
    return { package: expand(text('runtime.package', '')), torch: text('runtime.torch', DEFAULT_TORCH), extraIndexUrl: text('runtime.extraIndexUrl', '') };
}

/** The bundled wheel among the files of the extension's dist folder: exactly one subcoder wheel. */
export function bundledWheel(names: string[]): string | undefined {
    const wheels = names.filter((n) => /^subcoder-[^-]+-.*\.whl$/.test(n)).sort();
    return wheels.length === 1 ? wheels[0] : undefined;
}

export interface Step {
    /** Shown in the progress notification. */
    title: string;
    command: string;
    args: string[];
    /** Share of the whole install (the weights add up to 100). */
    weight: number;
}

const PIP = ['-m', 'pip', 'install', '--disable-pip-version-check', '--no-input', '--progress-bar', 'off'];
/** Imports what serving imports first: torch, and the server's entry module. */
export const CHECK_SCRIPT = 'import torch, subcoder.pruner.cli\nprint("torch", torch.__version__)\n';

/**
 * The install, step by step. torch comes first and alone, pinned, so that its build (CPU) is chosen
 * here and not by whatever the wheel's dependencies resolve to; the second step names it again so a
 * conflicting pin fails loudly instead of replacing it.
 */
export function installSteps(o: {
    base: PythonCommand;
    venvDir: string;
    createVenv: boolean;
    platform: string;
    settings: RuntimeSettings;
    /** What pip installs for subcoder: a wheel path, a folder or a requirement. */
    packageSpec: string;
}): Step[] {
    const py = venvPython(o.venvDir, o.platform);
    const index = o.settings.extraIndexUrl ? ['--extra-index-url', o.settings.extraIndexUrl] : [];
    const steps: Step[] = [];
    if (o.createVenv) {
        steps.push({ title: 'Creating the virtual environment', command: o.base.command, args: [...o.base.args, '-m', 'venv', o.venvDir], weight: 5 });
    }
    steps.push(
        { title: 'Installing torch (CPU build)', command: py, args: [...PIP, ...index, o.settings.torch], weight: o.createVenv ? 45 : 50 },
        { title: 'Installing subcoder and its dependencies', command: py, args: [...PIP, o.packageSpec, o.settings.torch], weight: 45 },
        // -P as when serving: the working directory never shadows the installed package.
        { title: 'Checking the runtime', command: py, args: ['-P', '-c', CHECK_SCRIPT], weight: 5 },
    );
    return steps;
}

/** One of pip's output lines as a short progress message, or undefined for the lines that say nothing new. */
export function pipStage(line: string): string | undefined {
    const base = (p: string) => p.split(/[\\/]/).pop() ?? p;
    let m: RegExpExecArray | null;
    if ((m = /^Collecting (\S+)/.exec(line))) {
        return `collecting ${m[1]}`;
    }
    if ((m = /^\s*Downloading (\S+)(?: \(([^)]+)\))?/.exec(line))) {
        return `downloading ${base(m[1])}${m[2] ? ` (${m[2]})` : ''}`;
    }
    if ((m = /^Processing (\S+)/.exec(line))) {
        return `reading ${base(m[1])}`;
    }
    if ((m = /^\s*(?:Building|Created) wheel for (\S+)/.exec(line))) {
        return `building ${m[1]}`;
    }
    if ((m = /^Installing collected packages: (.*)$/.exec(line))) {
        const names = m[1].split(',').map((s) => s.trim()).filter(Boolean);
        return names.length === 1 ? `installing ${names[0]}` : `installing ${names.length} packages`;
    }
    if ((m = /^Requirement already satisfied: (\S+)/.exec(line))) {
        return `${m[1]} already there`;
    }
    if (/^Successfully installed/.test(line)) {
        return 'installed';
    }
    return undefined;
}

/**
 * The line worth showing from a failed step's output: pip's first ERROR line (the later ones are
 * follow-ups such as "ResolutionImpossible"), else the last line naming an error (a traceback's end).
 */
export function failureLine(output: string): string {
    const lines = output.split('\n').map((l) => l.trim()).filter(Boolean);
    const error = lines.find((l) => /^ERROR:/.test(l)) ?? [...lines].reverse().find((l) => /Error\b|error:/.test(l));
    return error ?? lines.pop() ?? 'no output';
}

export interface Marker {
    format: number;
    /** The package installed: a wheel's file name and sha256, or the spec as configured. */
    package: string;
    torch: string;
    python: string;
    installed: string;
}

/** Whether an installed runtime is the one wanted now; otherwise why not (in words, for the log). */
export function markerMismatch(marker: Marker | undefined, wanted: { package: string; torch: string }): string | undefined {
    if (!marker) {
        return 'no runtime installed';
    }
    if (marker.format !== MARKER_FORMAT) {
        return `runtime layout ${marker.format}, this extension needs ${MARKER_FORMAT}`;
    }
    if (marker.package !== wanted.package) {
        return `subcoder changed (installed ${marker.package}, wanted ${wanted.package})`;
    }
    if (marker.torch !== wanted.torch) {
        return `torch requirement changed (installed ${marker.torch}, wanted ${wanted.torch})`;
    }
    return undefined;
}

export function parseMarker(text: string): Marker | undefined {
    try {
        const m = JSON.parse(text);
        return m && typeof m === 'object' && typeof m.format === 'number' && typeof m.package === 'string' && typeof m.torch === 'string'
            ? (m as Marker) : undefined;
    } catch {
        return undefined;
    }
}
