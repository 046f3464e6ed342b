/**
 * The everyday controls around ghost text: which documents get it (language, file globs), when it is
 * asked for (on/off, snooze, manual trigger, debounce) and how long one request may take. Pure: the
 * middleware in server.ts asks `completionBlocked` and waits `debounce`; nothing here imports vscode.
 */

/** Files that never get completions unless the user clears `subcoder.exclude`: secrets first. */
export const DEFAULT_EXCLUDE: readonly string[] = [
    '**/.env',
    '**/.env.*',
    '**/*.pem',
    '**/*.key',
    '**/*.p12',
    '**/*.pfx',
    '**/*.keystore',
    '**/id_rsa*',
    '**/id_ed25519*',
    '**/.npmrc',
    '**/.pypirc',
    '**/.netrc',
    '**/credentials',
    '**/credentials.json',
    '**/secrets.{json,yaml,yml,toml}',
];

export const DEFAULT_DEBOUNCE_MS = 75;
export const DEFAULT_REQUEST_BUDGET_MS = 3000;
export type TriggerMode = 'automatic' | 'manual';

/** The extension-side controls, as read from the `subcoder.*` settings. */
export interface Controls {
    trigger: TriggerMode;
    debounceMs: number;
    requestBudgetMs: number;
    exclude: string[];
}

export const CONTROL_DEFAULTS: Readonly<Controls> = Object.freeze({
    trigger: 'automatic',
    debounceMs: DEFAULT_DEBOUNCE_MS,
    requestBudgetMs: DEFAULT_REQUEST_BUDGET_MS,
    exclude: [...DEFAULT_EXCLUDE],
});

function clampInt(value: unknown, low: number, high: number, fallback: number): number {
    return typeof value === 'number' && Number.isFinite(value) ? Math.min(high, Math.max(low, Math.round(value))) : fallback;
}

/** The controls from a settings getter (`key` without `subcoder.`): wrong values become the defaults. */
export function readControls(get: (key: string) => unknown): Controls {
    const exclude = get('exclude');
    return {
        trigger: get('trigger') === 'manual' ? 'manual' : 'automatic',
        debounceMs: clampInt(get('debounceMs'), 0, 5000, DEFAULT_DEBOUNCE_MS),
        requestBudgetMs: clampInt(get('requestBudgetMs'), 100, 60000, DEFAULT_REQUEST_BUDGET_MS),
        exclude: Array.isArray(exclude) ? exclude.filter((g): g is string => typeof g === 'string') : [...DEFAULT_EXCLUDE],
    };
}

/**
 * A glob (`*` within a path segment, `**` across segments, `?`, `{a,b}`) as a RegExp over `/`-separated
 * paths. A glob without `/` matches the file name anywhere, as in VS Code's `files.exclude`.
 */
export function globToRegExp(glob: string): RegExp {
    let g = glob.trim().replace(/\\/g, '/');
    if (!g.includes('/')) {
        g = `**/${g}`;
    }
    let out = '';
    for (let i = 0; i < g.length; i++) {
        const c = g[i];
        if (c === '*' && g[i + 1] === '*') {
            const slash = g[i + 2] === '/';
            out += slash ? '(?:.*/)?' : '.*';
            i += slash ? 2 : 1;
        } else if (c === '*') {
            out += '[^/]*';
        } else if (c === '?') {
            out += '[^/]';
        } else if (c === '{') {
            const end = g.indexOf('}', i);
            if (end < 0) {
                out += '\\{';
                continue;
            }
            out += `(?:${g.slice(i + 1, end).split(',').map(escapeRegExp).join('|')})`;
            i = end;
        } else {
            out += escapeRegExp(c);
        }
    }
    return new RegExp(`^(?:.*/)?${out.replace(/^\(\?:\.\*\/\)\?/, '')}$`, 'i');
}

function escapeRegExp(s: string): string {
    return s.replace(/[.+^${}()|[\]\\*?]/g, '\\$&');
}

/** The first glob of `globs` that `path` matches, or undefined. Windows paths are compared with `/`. */
export function excludedBy(path: string, globs: readonly string[]): string | undefined {
    const normal = path.replace(/\\/g, '/');
    return globs.find((g) => g.trim() && compiled(g).test(normal));
}

// Asked on every keystroke (didChange): each glob is compiled once.
const compiledGlobs = new Map<string, RegExp>();
function compiled(glob: string): RegExp {
    let re = compiledGlobs.get(glob);
    if (!re) {
        re = globToRegExp(glob);
        compiledGlobs.set(glob, re);
    }
    return re;
}

/** What decides whether one inline request goes to the server. */
export interface RequestFacts {
    /** `subcoder.enable` for the document's language (false for plain text and Markdown by default). */
    languageEnabled: boolean;
    /** The document's file path, or undefined for an untitled document. */
    path?: string;
    /** True when the user asked (Alt+\ or "Trigger inline suggestion"), false while typing. */
    invoked: boolean;
    now: number;
}

/** The user's switches that hold across documents: off, or snoozed until a time. */
export interface Switches {
    off: boolean;
    snoozedUntil?: number;
}

/** Why no request is made for this document now, or undefined when one is. */
export function completionBlocked(facts: RequestFacts, controls: Controls, switches: Switches): string | undefined {
    if (switches.off) {
        return 'completions are turned off';
    }
    if (switches.snoozedUntil !== undefined && facts.now < switches.snoozedUntil) {
        return 'completions are snoozed';
    }
    if (!facts.languageEnabled) {
        return "completions are off for the document's language";
    }
    if (facts.path) {
        const glob = excludedBy(facts.path, controls.exclude);
        if (glob) {
            return `the file matches subcoder.exclude ${glob}`;
        }
    }
    if (controls.trigger === 'manual' && !facts.invoked) {
        return 'completions come on request only (subcoder.trigger is manual)';
    }
    return undefined;
}

/** Minutes left of a snooze, rounded up; 0 when not snoozed. */
export function snoozeMinutesLeft(switches: Switches, now: number): number {
    return switches.snoozedUntil !== undefined && now < switches.snoozedUntil ? Math.ceil((switches.snoozedUntil - now) / 60000) : 0;
}

/** Resolves true after `ms`, or false as soon as `cancelled` is signalled (the user typed on). */
export function debounce(ms: number, onCancel: (listener: () => void) => void): Promise<boolean> {
    if (ms <= 0) {
        return Promise.resolve(true);
    }
    return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(true), ms);
        onCancel(() => {
            clearTimeout(timer);
            resolve(false);
        });
    });
}

/** The last completion, for the status tooltip. */
export interface LastCompletion {
    ms: number;
    tokens?: number;
    /** Whether it was answered within the request budget (false: cut off, nothing shown). */
    inBudget: boolean;
}

export function describeLast(last: LastCompletion | undefined): string | undefined {
    if (!last) {
        return undefined;
    }
    if (!last.inBudget) {
        return `Last completion: cut off at the ${last.ms} ms budget (subcoder.requestBudgetMs).`;
    }
    const tokens = last.tokens === undefined ? '' : `, ${last.tokens} token${last.tokens === 1 ? '' : 's'}`;
    return `Last completion: ${last.ms} ms${tokens}.`;
}

/** Inline-completion providers of other extensions that compete with ours for the same ghost text. */
export const OTHER_PROVIDERS: Readonly<Record<string, string>> = Object.freeze({
    'GitHub.copilot': 'GitHub Copilot',
    'Continue.continue': 'Continue',
    'TabbyML.vscode-tabby': 'Tabby',
    'ggml-org.llama-vscode': 'llama.vscode',
    'Codeium.codeium': 'Codeium',
    'supermaven.supermaven': 'Supermaven',
    'AmazonWebServices.amazon-q-vscode': 'Amazon Q',
});

/** The display names of the other providers among the active extension ids (compared case-insensitively). */
export function otherProviders(activeIds: readonly string[]): string[] {
    const active = new Set(activeIds.map((id) => id.toLowerCase()));
    return Object.entries(OTHER_PROVIDERS).filter(([id]) => active.has(id.toLowerCase())).map(([, name]) => name);
}

/** The one-time message when another provider is active, or undefined when none is. */
export function otherProvidersMessage(names: readonly string[]): string | undefined {
    if (!names.length) {
        return undefined;
    }
    const list = names.length === 1 ? names[0] : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
    return `Subcoder: ${list} also ${names.length === 1 ? 'shows' : 'show'} ghost text; VS Code shows one suggestion at a time, so the two take turns. ` +
        'To choose, turn one off: Subcoder from its status-bar menu or per language with "Subcoder: Toggle completions for the current language", the other in its own settings.';
}

/** The subcoder language (`subcoder.languages`) of a VS Code language id, or undefined for others. */
export function subcoderLanguage(languageId: string): string | undefined {
    const ids: Record<string, string> = {
        python: 'python', java: 'java', cpp: 'cpp', c: 'cpp', cuda: 'cpp', javascript: 'javascript',
        javascriptreact: 'javascript', typescript: 'typescript', typescriptreact: 'typescript', go: 'go', rust: 'rust',
    };
    return ids[languageId];
}
