/**
 * The `subcoder` settings: which are the server's (passed as `initializationOptions` and answered to
 * `workspace/configuration`) and which only the extension reads. Pure: no `vscode` import, so the
 * mapping is unit-tested without an editor. The defaults mirror docs/ARCHITECTURE.md ("LSP contract")
 * and package.json; a unit test keeps the three in step.
 */

export const SECTION = 'subcoder';

/** The server's configuration section, as the server receives it. */
export interface ServerSettings {
    model: string;
    sparsity: number;
    pattern: string;
    values: string;
    method: string;
    calibration: string;
    mixRatio: number;
    languages: string[];
    device: string;
    dtype: string;
    maxNewTokens: number;
    completionMode: string;
    fimOrder: string;
    cacheDir: string;
    cacheSizeLimitMB: number;
    logLevel: string;
    sparseKernel: boolean;
    serveBaseModelWhileBuilding: boolean;
    contextTokens: number;
    suffixTokens: number;
    calibrationSamples: number;
    calibrationSeqLen: number;
    /** `"ask"`, or true/false: whether the first use of a preset may download it. */
    allowDownload: string | boolean;
    backend: string;
    backendTimeout: number;
}

export const SERVER_DEFAULTS: Readonly<ServerSettings> = Object.freeze({
    model: '', // the server's default preset
    sparsity: 0,
    pattern: 'unstructured',
    values: 'bf16',
    method: 'wanda',
    calibration: 'corpus',
    mixRatio: 0.5,
    // subcoder.pruner.languages.LANGUAGES, in its order (tests/pruner/test_languages.py holds them equal)
    languages: ['python', 'java', 'cpp', 'javascript', 'typescript', 'go', 'rust'],
    device: 'cpu',
    dtype: 'auto',
    maxNewTokens: 48,
    completionMode: 'auto',
    fimOrder: 'psm',
    cacheDir: '',
    cacheSizeLimitMB: 4096,
    logLevel: 'info',
    sparseKernel: true,
    serveBaseModelWhileBuilding: true,
    contextTokens: 1024,
    suffixTokens: 0,
    calibrationSamples: 32,
    calibrationSeqLen: 512,
    allowDownload: 'ask',
    backend: '', // the local model
    backendTimeout: 10,
});

export const SERVER_KEYS = Object.keys(SERVER_DEFAULTS) as (keyof ServerSettings)[];

/** Settings only the extension reads (the controls are controls.ts'); changing `python` restarts the server. */
export const CLIENT_KEYS = ['enable', 'python', 'trace.server', 'trigger', 'debounceMs', 'requestBudgetMs', 'exclude'] as const;

/** Keys whose values are paths: `~` and `${workspaceFolder}` are expanded before the server sees them. */
const PATH_KEYS: ReadonlySet<keyof ServerSettings> = new Set(['cacheDir', 'model']);

/** Reads one setting (`key` without the `subcoder.` prefix); undefined when unset. */
export type SettingGetter = (key: string) => unknown;

export interface PathContext {
    home: string;
    workspaceFolder?: string;
}

/** `~`, `~/x`, `${userHome}` and `${workspaceFolder}` expanded; anything else returned as given. */
export function expandPath(value: string, ctx: PathContext): string {
    let out = value.trim();
    if (out === '~') {
        out = ctx.home;
    } else if (out.startsWith('~/')) {
        out = ctx.home + out.slice(1);
    }
    out = out.replace(/\$\{userHome\}/g, ctx.home);
    if (ctx.workspaceFolder !== undefined) {
        out = out.replace(/\$\{workspaceFolder\}/g, ctx.workspaceFolder);
    }
    return out;
}

/** Keys whose values may be of another type than their default's. */
const ALSO_ALLOWED: Partial<Record<keyof ServerSettings, string>> = { allowDownload: 'boolean' };

function sameType(value: unknown, fallback: unknown, key?: keyof ServerSettings): boolean {
    if (key !== undefined && typeof value === ALSO_ALLOWED[key]) {
        return true;
    }
    if (Array.isArray(fallback)) {
        return Array.isArray(value) && value.every((v) => typeof v === 'string');
    }
    return typeof value === typeof fallback && !(typeof value === 'number' && !Number.isFinite(value));
}

/**
 * The server's section from the user's settings: every key present, wrong-typed values replaced by
 * the default (and reported in `problems`), paths expanded.
 */
export function serverSettings(
    get: SettingGetter,
    ctx: PathContext,
    problems: string[] = [],
): ServerSettings {
    const out: Record<string, unknown> = {};
    for (const key of SERVER_KEYS) {
        const fallback = SERVER_DEFAULTS[key];
        let value = get(key);
        if (value === undefined || value === null) {
            value = fallback;
        } else if (!sameType(value, fallback, key)) {
            problems.push(`subcoder.${key}: expected ${Array.isArray(fallback) ? 'a list of strings' : typeof fallback}, using the default ${JSON.stringify(fallback)}`);
            value = fallback;
        }
        if (PATH_KEYS.has(key) && typeof value === 'string') {
            value = expandPath(value, ctx);
        }
        out[key] = Array.isArray(value) ? [...value] : value;
    }
    return out as unknown as ServerSettings;
}

/** What the server gets in `initialize`: its section under its name, like `workspace/configuration`. */
export function initializationOptions(settings: ServerSettings): { subcoder: ServerSettings } {
    return { [SECTION]: settings } as { subcoder: ServerSettings };
}

export type ConfigChange = 'restart' | 'forward' | 'client' | 'none';

/**
 * What a configuration change needs: `restart` when the interpreter changed (a new process),
 * `forward` when a server setting changed (sent as `workspace/didChangeConfiguration`), `client` when
 * only extension-side settings changed, `none` when nothing of ours changed.
 */
export function classifyChange(affects: (qualifiedKey: string) => boolean): ConfigChange {
    if (!affects(SECTION)) {
        return 'none';
    }
    if (affects(`${SECTION}.python`)) {
        return 'restart';
    }
    if (SERVER_KEYS.some((k) => affects(`${SECTION}.${k}`))) {
        return 'forward';
    }
    return 'client';
}
