/**
 * Which Python runs the server, how to start it, and whether subcoder is installed there.
 * Pure apart from `checkServerInstalled`, which takes the process runner as an argument.
 */
import { expandPath, PathContext } from './settings';

/** `runtime`: the managed venv in the extension's storage (runtime.ts), used when `subcoder.python` is empty. */
export type InterpreterSource = 'setting' | 'runtime' | 'python-extension' | 'default';

export interface Interpreter {
    path: string;
    source: InterpreterSource;
}

export const DEFAULT_PYTHON = 'python3';

/** The module run as `python -m ... serve` (the `subcoder serve` console script runs the same). */
export const SERVER_MODULE = 'subcoder.pruner.cli';
// -P: the working directory never goes on sys.path, so a workspace's own modules are never imported.
export const SERVER_ARGS: readonly string[] = ['-P', '-m', SERVER_MODULE, 'serve'];
export const PIP_PACKAGE = 'subcoder';

/**
 * `subcoder.python` when set, else the Python extension's selected interpreter when there is one,
 * else `python3` from PATH.
 */
export function chooseInterpreter(opts: {
    setting?: string;
    pythonExtension?: string;
    ctx: PathContext;
}): Interpreter {
    const setting = opts.setting?.trim();
    if (setting) {
        return { path: expandPath(setting, opts.ctx), source: 'setting' };
    }
    const fromExtension = opts.pythonExtension?.trim();
    if (fromExtension) {
        return { path: fromExtension, source: 'python-extension' };
    }
    return { path: DEFAULT_PYTHON, source: 'default' };
}

export function describeInterpreter(interp: Interpreter): string {
    switch (interp.source) {
        case 'setting':
            return `${interp.path} (from subcoder.python)`;
        case 'runtime':
            return `${interp.path} (Subcoder's own runtime)`;
        case 'python-extension':
            return `${interp.path} (selected in the Python extension)`;
        default:
            return `${interp.path} (default)`;
    }
}

/**
 * Quotes one argument when it needs it: for a POSIX shell, or on Windows for PowerShell (VS Code's
 * default terminal there), where single quotes keep `$`, backticks and `"` literal and `''` is a quote.
 */
export function shellQuote(arg: string, platform: string = process.platform): string {
    if (/^[\w@%+=:,./\\-]+$/.test(arg)) {
        return arg;
    }
    if (platform === 'win32') {
        return `'${arg.replace(/'/g, "''")}'`;
    }
    return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * The command that runs `program` with `args` in the terminal. PowerShell reads a quoted first word as
 * a string, not a program to run: it needs the call operator `&` (which a POSIX shell would reject).
 */
export function commandLine(program: string, args: readonly string[], platform: string = process.platform): string {
    const quoted = shellQuote(program, platform);
    const head = platform === 'win32' && quoted !== program ? `& ${quoted}` : quoted;
    return [head, ...args.map((a) => shellQuote(a, platform))].join(' ');
}

/** The command that installs the server into `python`. */
export function installCommand(python: string, platform: string = process.platform): string {
    return commandLine(python, ['-m', 'pip', 'install', PIP_PACKAGE], platform);
}

/** Exit code of the probe when the interpreter runs but the server module is missing. */
export const PROBE_MISSING = 3;

/** `python -c PROBE`: exits PROBE_MISSING when the server module cannot be found. */
export const PROBE_SCRIPT =
    'import importlib.util, sys\n' +
    'try:\n' +
    `    found = importlib.util.find_spec("${SERVER_MODULE}") is not None\n` +
    'except ImportError:\n' +
    '    found = False\n' +
    `sys.exit(0 if found else ${PROBE_MISSING})\n`;

export type InstallState =
    | { kind: 'ok' }
    | { kind: 'missing-module'; python: string; install: string }
    | { kind: 'no-interpreter'; python: string; detail: string }
    | { kind: 'probe-failed'; python: string; detail: string };

export interface ProbeResult {
    /** Exit status; null when the process could not start or was killed. */
    code: number | null;
    /** Error from starting the process (e.g. ENOENT). */
    error?: { code?: string; message: string };
    stderr: string;
}

/** Runs a command and resolves with its exit status; injected so this is testable. */
export type Runner = (command: string, args: string[]) => Promise<ProbeResult>;

/** Whether `python` can run the server, and if not, what to tell the user. */
export async function checkServerInstalled(python: string, run: Runner): Promise<InstallState> {
    const result = await run(python, ['-c', PROBE_SCRIPT]);
    return interpretProbe(python, result);
}

export function interpretProbe(python: string, result: ProbeResult): InstallState {
    if (result.error) {
        const detail = result.error.code === 'ENOENT' ? 'not found' : result.error.message;
        return { kind: 'no-interpreter', python, detail };
    }
    if (result.code === 0) {
        return { kind: 'ok' };
    }
    if (result.code === PROBE_MISSING) {
        return { kind: 'missing-module', python, install: installCommand(python) };
    }
    const lastLine = result.stderr.trim().split('\n').pop() ?? '';
    return { kind: 'probe-failed', python, detail: lastLine || `exit status ${result.code}` };
}

/** The user-facing sentence for a failed check. */
export function installMessage(state: InstallState): string | undefined {
    switch (state.kind) {
        case 'ok':
            return undefined;
        case 'missing-module':
            return `Subcoder: the subcoder server is not installed in ${state.python}. Clear "subcoder.python" to let Subcoder set up its own runtime, or install it there with: ${state.install}`;
        case 'no-interpreter':
            return `Subcoder: cannot run Python interpreter ${state.python} (${state.detail}). Fix "subcoder.python", or clear it to let Subcoder set up its own runtime.`;
        case 'probe-failed':
            return `Subcoder: ${state.python} failed while looking for the subcoder server: ${state.detail}`;
    }
}
