/**
 * The interpreter selected in the Python extension (ms-python.python), through its public
 * `environments` API, when that extension is installed. Only the part of the API used here is typed.
 */
import type { Disposable, Event, Uri } from 'vscode';
import { getExtension } from './vscodeapi';
import { traceWarn } from './log';

export const PYTHON_EXTENSION_ID = 'ms-python.python';

interface EnvironmentPath {
    id: string;
    path: string;
}

interface ResolvedEnvironment {
    executable: { uri?: Uri };
}

interface PythonEnvironmentsApi {
    getActiveEnvironmentPath(resource?: Uri): EnvironmentPath;
    resolveEnvironment(env: EnvironmentPath | string): Promise<ResolvedEnvironment | undefined>;
    onDidChangeActiveEnvironmentPath: Event<unknown>;
}

interface PythonExtensionApi {
    environments?: PythonEnvironmentsApi;
}

async function api(): Promise<PythonEnvironmentsApi | undefined> {
    const ext = getExtension<PythonExtensionApi>(PYTHON_EXTENSION_ID);
    if (!ext) {
        return undefined;
    }
    try {
        const exports = ext.isActive ? ext.exports : await ext.activate();
        return exports?.environments;
    } catch (err) {
        traceWarn(`Python extension did not activate: ${err instanceof Error ? err.message : String(err)}`);
        return undefined;
    }
}

/** The selected interpreter's executable, or undefined when there is no Python extension or selection. */
export async function selectedInterpreter(resource?: Uri): Promise<string | undefined> {
    const envs = await api();
    if (!envs) {
        return undefined;
    }
    try {
        const resolved = await envs.resolveEnvironment(envs.getActiveEnvironmentPath(resource));
        return resolved?.executable.uri?.fsPath;
    } catch (err) {
        traceWarn(`Could not resolve the Python extension's interpreter: ${err instanceof Error ? err.message : String(err)}`);
        return undefined;
    }
}

/** Calls `listener` when the user selects another interpreter in the Python extension. */
export async function onDidChangeInterpreter(listener: () => unknown): Promise<Disposable | undefined> {
    const envs = await api();
    return envs?.onDidChangeActiveEnvironmentPath(() => listener());
}
