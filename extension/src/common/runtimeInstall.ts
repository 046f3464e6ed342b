/**
 * Runs the managed runtime's install (runtime.ts plans it): processes, files, the lock between
 * windows, the install log. No editor API here; runtimeUi.ts shows what this reports.
 */
import { spawn } from 'child_process';
import { createHash } from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import {
    bundledWheel,
    choosePython,
    describeCommand,
    failureLine,
    installSteps,
    judgeProbe,
    LOG_NAME,
    Marker,
    MARKER_FORMAT,
    MARKER_NAME,
    markerMismatch,
    parseMarker,
    pipStage,
    PythonCommand,
    pythonCandidates,
    RunResult,
    RuntimeSettings,
    VENV_DIR,
    venvPython,
    VERSION_PROBE,
    versionText,
} from './runtime';

export interface RuntimeEnv {
    /** The extension's global storage folder: the venv, its marker, the install log and the lock live here. */
    storageDir: string;
    /** Where the bundled wheel is (the extension's dist folder). */
    bundleDir: string;
    platform: string;
    settings: RuntimeSettings;
    /** The Python extension's selected interpreter, one more candidate to build the venv from. */
    pythonExtension?: string;
}

export function runtimePaths(storageDir: string, platform: string) {
    const venv = path.join(storageDir, VENV_DIR);
    return {
        venv,
        python: venvPython(venv, platform),
        marker: path.join(venv, MARKER_NAME),
        log: path.join(storageDir, LOG_NAME),
        lock: path.join(storageDir, 'runtime.lock'),
    };
}

/**
 * The environment for every process of the install: the user's, without what would point Python or
 * pip somewhere else than the venv (a PYTHONPATH, a `--user` default, the user's site-packages).
 */
export function childEnv(base: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    const env: NodeJS.ProcessEnv = { ...base, PYTHONNOUSERSITE: '1', PYTHONUNBUFFERED: '1' };
    for (const key of ['PYTHONPATH', 'PYTHONHOME', 'PIP_USER', 'PIP_TARGET', 'PIP_PREFIX', 'PIP_REQUIRE_VIRTUALENV', 'VIRTUAL_ENV']) {
        delete env[key];
    }
    return env;
}

/** Runs a command to the end, handing each output line (stdout and stderr) to `onLine`. */
export function run(command: string, args: string[], opts: { onLine?: (line: string) => void; signal?: AbortSignal; timeoutMs?: number } = {}): Promise<RunResult> {
    return new Promise((resolve) => {
        let stdout = '';
        let stderr = '';
        let settled = false;
        const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv(process.env), windowsHide: true });
        const kill = () => child.kill();
        // Own timer rather than spawn's `timeout`, which stays armed when the spawn itself fails.
        const timer = opts.timeoutMs ? setTimeout(kill, opts.timeoutMs) : undefined;
        opts.signal?.addEventListener('abort', kill, { once: true });
        const done = (result: RunResult) => {
            if (settled) {
                return;
            }
            settled = true;
            clearTimeout(timer);
            opts.signal?.removeEventListener('abort', kill);
            resolve(result);
        };
        const lines = (stream: NodeJS.ReadableStream, keep: (s: string) => void) =>
            readline.createInterface({ input: stream, crlfDelay: Infinity, terminal: false }).on('line', (line) => {
                keep(line + '\n');
                opts.onLine?.(line);
            });
        lines(child.stdout, (s) => (stdout += s));
        lines(child.stderr, (s) => (stderr += s));
        child.on('error', (err: NodeJS.ErrnoException) => done({ code: null, error: { code: err.code, message: err.message }, stdout, stderr }));
        child.on('close', (code) => done({ code, stdout, stderr }));
    });
}

export type RuntimeState = { kind: 'ready'; python: string } | { kind: 'absent' | 'outdated'; why: string };

/** What subcoder package the settings ask for: its pip spec and the identity the marker records. */
export async function packageToInstall(env: RuntimeEnv): Promise<{ spec: string; identity: string } | { error: string }> {
    const configured = env.settings.package;
    if (configured) {
        const stat = await fs.promises.stat(configured).catch(() => undefined);
        if (stat?.isFile()) {
            return { spec: configured, identity: `${path.basename(configured)} sha256:${await sha256(configured)}` };
        }
        // A folder or a requirement: pip decides; Reinstall runtime picks up changes in a folder.
        return { spec: configured, identity: configured };
    }
    const names = await fs.promises.readdir(env.bundleDir).catch(() => [] as string[]);
    const wheel = bundledWheel(names);
    if (!wheel) {
        return { error: `no subcoder wheel is bundled in ${env.bundleDir} (the .vsix is built with \`npm run package\`); set "subcoder.runtime.package" to a wheel, a project folder or a requirement` };
    }
    const file = path.join(env.bundleDir, wheel);
    return { spec: file, identity: `${wheel} sha256:${await sha256(file)}` };
}

async function sha256(file: string): Promise<string> {
    return createHash('sha256').update(await fs.promises.readFile(file)).digest('hex');
}

/** Whether the runtime is installed and is the one the settings and the bundled wheel ask for. */
export async function runtimeState(env: RuntimeEnv): Promise<RuntimeState> {
    const paths = runtimePaths(env.storageDir, env.platform);
    const text = await fs.promises.readFile(paths.marker, 'utf8').catch(() => undefined);
    const marker = text === undefined ? undefined : parseMarker(text);
    if (!marker) {
        return { kind: 'absent', why: text === undefined ? 'no runtime installed' : 'the runtime marker is unreadable' };
    }
    const wanted = await packageToInstall(env);
    const why = 'error' in wanted
        ? undefined // Nothing to compare with: keep serving from what is installed.
        : markerMismatch(marker, { package: wanted.identity, torch: env.settings.torch });
    if (why) {
        return { kind: 'outdated', why };
    }
    if (!fs.existsSync(paths.python)) {
        return { kind: 'absent', why: `${paths.python} is missing` };
    }
    return { kind: 'ready', python: paths.python };
}

export type InstallOutcome =
    | { kind: 'ready'; python: string }
    | { kind: 'failed'; message: string; log?: string }
    | { kind: 'cancelled' };

export interface InstallHooks {
    /** A step started (increment 0) or ended (its weight), or pip reported a stage. */
    progress(message: string, increment: number): void;
    /** Another window is installing: this one waits for it. */
    waiting?(): void;
}

/** Installs (or brings up to date) the runtime; one window at a time. */
export async function installRuntime(env: RuntimeEnv, hooks: InstallHooks, signal?: AbortSignal): Promise<InstallOutcome> {
    const paths = runtimePaths(env.storageDir, env.platform);
    await fs.promises.mkdir(env.storageDir, { recursive: true });
    const release = await acquireLock(paths.lock, hooks, signal);
    if (!release) {
        return { kind: 'cancelled' };
    }
    try {
        // The other window may have just finished the same install.
        const state = await runtimeState(env);
        if (state.kind === 'ready') {
            return state;
        }
        return await installLocked(env, paths, hooks, signal);
    } finally {
        release();
    }
}

async function installLocked(env: RuntimeEnv, paths: ReturnType<typeof runtimePaths>, hooks: InstallHooks, signal?: AbortSignal): Promise<InstallOutcome> {
    // The previous attempt's log stays beside the new one: a Reinstall does not erase why the last one failed.
    await fs.promises.rename(paths.log, paths.log.replace(/\.log$/, '.previous.log')).catch(() => undefined);
    const log = fs.createWriteStream(paths.log, { flags: 'w' });
    const write = (line: string) => log.write(line + '\n');
    const finish = async (outcome: InstallOutcome): Promise<InstallOutcome> => {
        write(`== ${outcome.kind}${outcome.kind === 'failed' ? `: ${outcome.message}` : ''}`);
        await new Promise((r) => log.end(r));
        return outcome;
    };
    write(`== subcoder runtime install, ${new Date().toISOString()}, into ${paths.venv}`);

    const pkg = await packageToInstall(env);
    if ('error' in pkg) {
        return finish({ kind: 'failed', message: pkg.error, log: paths.log });
    }
    hooks.progress('Looking for Python 3.11+', 0);
    const probed: { python: PythonCommand; outcome: ReturnType<typeof judgeProbe> }[] = [];
    for (const python of pythonCandidates(env.platform, env.pythonExtension)) {
        const outcome = judgeProbe(python, await run(python.command, [...python.args, '-c', VERSION_PROBE], { timeoutMs: 30000 }));
        write(`== ${describeCommand(python)}: ${outcome.kind === 'fits' ? `${versionText(outcome.found.version)} at ${outcome.found.executable}` : outcome.why}`);
        probed.push({ python, outcome });
        if (outcome.kind === 'fits') {
            break;
        }
    }
    const choice = choosePython(probed);
    if (choice.kind === 'none') {
        return finish({ kind: 'failed', message: choice.message, log: paths.log });
    }

    // No marker while the venv changes: an interrupted install is never taken for a finished one.
    await fs.promises.rm(paths.marker, { force: true });
    const createVenv = !fs.existsSync(paths.python);
    if (createVenv) {
        await fs.promises.rm(paths.venv, { recursive: true, force: true });
    }
    const steps = installSteps({ base: choice.found.python, venvDir: paths.venv, createVenv, platform: env.platform, settings: env.settings, packageSpec: pkg.spec });
    for (const step of steps) {
        if (signal?.aborted) {
            return finish({ kind: 'cancelled' });
        }
        hooks.progress(step.title, 0);
        write(`== ${step.title}: ${[step.command, ...step.args].join(' ')}`);
        const result = await run(step.command, step.args, {
            signal,
            onLine: (line) => {
                write(line);
                const stage = pipStage(line);
                if (stage) {
                    hooks.progress(`${step.title}: ${stage}`, 0);
                }
            },
        });
        if (signal?.aborted || result.code !== 0) {
            if (step === steps[0] && createVenv) {
                // A venv cut short has no pip; the next attempt starts it again.
                await fs.promises.rm(paths.venv, { recursive: true, force: true });
            }
            if (signal?.aborted) {
                return finish({ kind: 'cancelled' });
            }
            const why = result.error ? result.error.message : failureLine(result.stdout + result.stderr);
            return finish({ kind: 'failed', message: `${step.title} failed: ${why}`, log: paths.log });
        }
        hooks.progress(step.title, step.weight);
    }
    const marker: Marker = {
        format: MARKER_FORMAT,
        package: pkg.identity,
        torch: env.settings.torch,
        python: `${versionText(choice.found.version)} ${choice.found.executable}`,
        installed: new Date().toISOString(),
    };
    await writeAtomic(paths.marker, JSON.stringify(marker, null, 2) + '\n');
    return finish({ kind: 'ready', python: paths.python });
}

async function writeAtomic(file: string, text: string): Promise<void> {
    const tmp = `${file}.tmp-${process.pid}`;
    await fs.promises.writeFile(tmp, text);
    await fs.promises.rename(tmp, file);
}

/** Deletes the runtime (for Reinstall). Waits for another window's install to end first. */
export async function removeRuntime(env: RuntimeEnv, hooks: InstallHooks): Promise<void> {
    const paths = runtimePaths(env.storageDir, env.platform);
    await fs.promises.mkdir(env.storageDir, { recursive: true });
    const release = await acquireLock(paths.lock, hooks);
    try {
        await fs.promises.rm(paths.venv, { recursive: true, force: true });
    } finally {
        release?.();
    }
}

function processAlive(pid: number): boolean {
    try {
        process.kill(pid, 0);
        return true;
    } catch (err) {
        // EPERM: alive, someone else's.
        return (err as NodeJS.ErrnoException).code === 'EPERM';
    }
}

/**
 * A lock file holding the installer's pid: created exclusively, so two windows never install into one
 * venv at once; a lock whose process is gone (a crashed window) is taken over.
 */
async function acquireLock(file: string, hooks: InstallHooks, signal?: AbortSignal): Promise<(() => void) | undefined> {
    let told = false;
    for (;;) {
        try {
            await fs.promises.writeFile(file, String(process.pid), { flag: 'wx' });
            return () => fs.rmSync(file, { force: true });
        } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
                throw err;
            }
        }
        const pid = Number((await fs.promises.readFile(file, 'utf8').catch(() => '')).trim());
        if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid || !processAlive(pid)) {
            await fs.promises.rm(file, { force: true });
            continue;
        }
        if (!told) {
            hooks.waiting?.();
            told = true;
        }
        if (signal?.aborted) {
            return undefined;
        }
        await new Promise((r) => setTimeout(r, 1000));
    }
}
