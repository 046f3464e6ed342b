/**
 * What the status bar and the "Show status" picker say, from the server's `subcoder/status`
 * notification and its work-done progress. Pure: the vscode side only renders `StatusView`.
 */

import { describeLast, LastCompletion, snoozeMinutesLeft, Switches } from './controls';

/** How long "Snooze" silences completions. */
export const SNOOZE_MINUTES = 30;

export type ServerState = 'detecting' | 'downloading' | 'converting' | 'building' | 'ready' | 'base' | 'error' | 'idle';

export interface LanguageShare {
    language: string;
    share: number;
    files?: number;
    bytes?: number;
}

/** Params of `subcoder/status` and the result of the `subcoder.status` command. */
export interface ServerStatus {
    state: ServerState;
    language?: string | null;
    percent?: number | null;
    sparsity?: number | null;
    pattern?: string | null;
    model?: string | null;
    sizeBytes?: number | null;
    message?: string | null;
    languages?: LanguageShare[] | null;
    /** "on (why)" / "off (why)": whether the sparse CPU kernel runs the sub-model. */
    kernel?: string | null;
}

/** The extension's own view of the server process, before and around the server's reports. */
export type ClientState = 'starting' | 'running' | 'stopped' | 'not-installed';

export interface BuildProgress {
    title: string;
    percent?: number;
    message?: string;
}

export interface StatusModel {
    client: ClientState;
    server?: ServerStatus;
    /** Work-done progress reports in flight, by token. */
    progress: Map<string, BuildProgress>;
    /** Why the client stopped or is not installed. */
    problem?: string;
    /** The user's switches: completions off, or snoozed until a time (ms since the epoch). */
    switches: Switches;
    last?: LastCompletion;
}

export function initialModel(): StatusModel {
    return { client: 'starting', progress: new Map(), switches: { off: false } };
}

/** `$/progress` value kinds (LSP work-done progress). */
export type ProgressValue =
    | { kind: 'begin'; title: string; percentage?: number; message?: string }
    | { kind: 'report'; percentage?: number; message?: string }
    | { kind: 'end'; message?: string };

export function applyProgress(model: StatusModel, token: string | number, value: ProgressValue): void {
    const key = String(token);
    if (value.kind === 'begin') {
        model.progress.set(key, { title: value.title, percent: value.percentage, message: value.message });
    } else if (value.kind === 'report') {
        const prev = model.progress.get(key) ?? { title: '' };
        model.progress.set(key, {
            title: prev.title,
            percent: value.percentage ?? prev.percent,
            message: value.message ?? prev.message,
        });
    } else {
        model.progress.delete(key);
    }
}

export type Severity = 'normal' | 'warning' | 'error';

export interface StatusView {
    text: string;
    tooltip: string;
    severity: Severity;
    /** The command run by clicking the item. */
    command: 'subcoder.showStatus' | 'subcoder.showLogs';
}

export function formatPercent(fraction: number | null | undefined): string {
    if (fraction === null || fraction === undefined || !Number.isFinite(fraction)) {
        return '?%';
    }
    return `${Math.round(fraction * 100)}%`;
}

export function formatBytes(bytes: number | null | undefined): string {
    if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) {
        return 'unknown size';
    }
    const units = ['B', 'KB', 'MB', 'GB', 'TB'];
    let value = bytes;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
        value /= 1024;
        unit += 1;
    }
    return unit === 0 ? `${value} B` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

/** The progress to show: the first active build, its percentage clamped to 0–100. */
function activeBuild(model: StatusModel): BuildProgress | undefined {
    for (const p of model.progress.values()) {
        return p;
    }
    return undefined;
}

function buildingText(language: string | null | undefined, percent: number | null | undefined): string {
    const lang = language ? ` ${language}` : '';
    const pct = percent === null || percent === undefined ? '' : ` ${Math.max(0, Math.min(100, Math.round(percent)))}%`;
    return `$(loading~spin) Subcoder: building${lang}${pct}`;
}

function sparsityDetail(s: ServerStatus): string {
    const pattern = s.pattern && s.pattern !== 'unstructured' ? `, ${s.pattern}` : '';
    return `${formatPercent(s.sparsity)} sparse${pattern}`;
}

/** The status bar item for a model: the server's state, then the user's switches and the last completion. */
export function statusView(model: StatusModel, now: number = Date.now()): StatusView {
    const view = serverView(model);
    if (model.client !== 'running' && model.client !== 'starting') {
        return view;
    }
    const snoozed = snoozeMinutesLeft(model.switches, now);
    if (model.switches.off) {
        view.text = '$(circle-slash) Subcoder: off';
        view.tooltip = `Completions are turned off. ${view.tooltip}`;
    } else if (snoozed) {
        view.text = `$(clock) Subcoder: snoozed ${snoozed} min`;
        view.tooltip = `Completions are snoozed for ${snoozed} more minute${snoozed === 1 ? '' : 's'}. ${view.tooltip}`;
    }
    const extra = [model.server?.kernel ? `Sparse kernel: ${model.server.kernel}.` : undefined, describeLast(model.last)].filter(Boolean);
    if (extra.length) {
        view.tooltip = `${view.tooltip}\n${extra.join('\n')}`;
    }
    return view;
}

function serverView(model: StatusModel): StatusView {
    if (model.client === 'not-installed') {
        return {
            text: '$(warning) Subcoder: not installed',
            tooltip: model.problem ?? 'The subcoder server is not installed in the selected Python interpreter.',
            severity: 'warning',
            command: 'subcoder.showLogs',
        };
    }
    if (model.client === 'stopped') {
        return {
            text: '$(debug-disconnect) Subcoder: stopped',
            tooltip: `${model.problem ?? 'The subcoder server is not running.'} Click for the logs.`,
            severity: 'error',
            command: 'subcoder.showLogs',
        };
    }
    const s = model.server;
    if (model.client === 'starting' && !s) {
        return { text: '$(loading~spin) Subcoder', tooltip: 'Starting the subcoder server…', severity: 'normal', command: 'subcoder.showLogs' };
    }
    const build = activeBuild(model);
    if (s?.state === 'error') {
        return {
            text: '$(error) Subcoder: error',
            tooltip: `${s.message ?? 'The server reported an error.'} Click for the logs.`,
            severity: 'error',
            command: 'subcoder.showLogs',
        };
    }
    if (s?.state === 'downloading' || s?.state === 'converting') {
        // The first use of a preset: fetching (after the user agreed) or de-quantizing it once. Not a build.
        const what = s.state === 'downloading' ? 'downloading' : 'converting';
        const percent = s.percent === null || s.percent === undefined ? '' : ` ${Math.round(s.percent)}%`;
        return {
            text: `$(cloud-download) Subcoder: ${what}${percent}`,
            tooltip: `${s.state === 'downloading' ? 'Downloading' : 'Converting (once)'} the model ${s.model ?? ''}${s.message ? `: ${s.message}` : ''}. Click for status.`.replace(/ {2,}/g, ' '),
            severity: 'normal',
            command: 'subcoder.showStatus',
        };
    }
    if (s?.state === 'building' || build) {
        const percent = build?.percent ?? (s?.state === 'building' ? s.percent : undefined);
        const language = s?.language ?? undefined;
        const serving = s?.state === 'base' || (s?.state === 'building' && s.model) ? ' Completions come from the base model meanwhile.' : '';
        return {
            text: buildingText(language, percent),
            tooltip: `Building the ${language ?? ''} sub-model${build?.message ? `: ${build.message}` : s?.message ? `: ${s.message}` : ''}.${serving} Click for status.`.replace(/ {2,}/g, ' '),
            severity: 'normal',
            command: 'subcoder.showStatus',
        };
    }
    switch (s?.state) {
        case 'detecting':
            return { text: '$(loading~spin) Subcoder: detecting', tooltip: 'Detecting the workspace languages…', severity: 'normal', command: 'subcoder.showStatus' };
        case 'ready': {
            const lang = s.language ?? 'sub-model';
            return {
                text: `$(check) Subcoder: ${lang} · ${sparsityDetail(s)}`,
                tooltip: `Serving the ${lang} sub-model of ${s.model ?? 'the base model'} (${sparsityDetail(s)}, ${formatBytes(s.sizeBytes)}). Click for status.`,
                severity: 'normal',
                command: 'subcoder.showStatus',
            };
        }
        case 'base':
            if (s.sparsity === 0) {
                // sparsity 0 (the default): the dense model is the steady state, not a stand-in
                return {
                    text: '$(check) Subcoder: dense model',
                    tooltip: `Serving ${s.model ?? 'the model'}, dense, on subcoder's engine (sparsity 0: no sub-model is built; set subcoder.sparsity to build one). Click for status.`,
                    severity: 'normal',
                    command: 'subcoder.showStatus',
                };
            }
            return {
                text: '$(circle-outline) Subcoder: base model',
                tooltip: `Serving the base model ${s.model ?? ''}${s.message ? `: ${s.message}` : ''}. Click for status.`.replace(/ {2,}/g, ' '),
                severity: 'normal',
                command: 'subcoder.showStatus',
            };
        case 'idle':
            return { text: '$(circle-slash) Subcoder: idle', tooltip: s.message ?? 'No supported language found in the workspace. Click for status.', severity: 'normal', command: 'subcoder.showStatus' };
        default:
            return { text: '$(pass) Subcoder', tooltip: 'The subcoder server is running. Click for status.', severity: 'normal', command: 'subcoder.showStatus' };
    }
}

/** A line of the "Show status" picker; `action` lines run a command when picked. */
export interface StatusLine {
    label: string;
    description?: string;
    detail?: string;
    separator?: boolean;
    action?: StatusAction;
}

export type StatusAction =
    | 'subcoder.rebuild'
    | 'subcoder.showLogs'
    | 'subcoder.restart'
    | 'subcoder.cancel'
    | 'subcoder.toggle'
    | 'subcoder.snooze'
    | 'subcoder.toggleLanguage';

const STATE_WORDS: Record<ServerState, string> = {
    detecting: 'detecting languages',
    downloading: 'downloading the model (once)',
    converting: 'converting the model (once)',
    building: 'building a sub-model',
    ready: 'ready',
    base: 'serving the base model',
    error: 'error',
    idle: 'idle',
};

/** The "Show status" picker's lines for a `subcoder.status` result. */
export function statusLines(s: ServerStatus, switches: Switches = { off: false }, now: number = Date.now()): StatusLine[] {
    const lines: StatusLine[] = [];
    lines.push({ label: '$(pulse) State', description: STATE_WORDS[s.state] ?? String(s.state), detail: s.message ?? undefined });
    if (s.state === 'building') {
        lines.push({ label: '$(loading~spin) Building', description: `${s.language ?? ''} ${s.percent === null || s.percent === undefined ? '' : `${Math.round(s.percent)}%`}`.trim() });
    }
    const serving = s.state === 'ready'
        ? `${s.language ?? '?'} sub-model of ${s.model ?? '?'}`
        : s.model ? `base model ${s.model}` : 'nothing yet';
    lines.push({ label: '$(server) Serving', description: serving });
    if (s.state === 'ready' || (s.sparsity !== null && s.sparsity !== undefined)) {
        lines.push({ label: '$(filter) Sparsity', description: `${formatPercent(s.sparsity)} (${s.pattern ?? 'unstructured'})` });
    }
    if (s.sizeBytes) {
        lines.push({ label: '$(database) Size', description: formatBytes(s.sizeBytes) });
    }
    if (s.kernel) {
        lines.push({ label: '$(chip) Sparse kernel', description: s.kernel });
    }
    const langs = [...(s.languages ?? [])].sort((a, b) => b.share - a.share);
    lines.push({ label: 'Detected languages', separator: true });
    if (langs.length === 0) {
        lines.push({ label: '$(info) none', description: 'no supported source files found' });
    }
    for (const l of langs) {
        const parts: string[] = [];
        if (l.files !== undefined) {
            parts.push(`${l.files} file${l.files === 1 ? '' : 's'}`);
        }
        if (l.bytes !== undefined) {
            parts.push(formatBytes(l.bytes));
        }
        lines.push({ label: `$(code) ${l.language}`, description: `${formatPercent(l.share)}${parts.length ? ` · ${parts.join(', ')}` : ''}` });
    }
    lines.push({ label: 'Actions', separator: true });
    if (s.state === 'building') {
        lines.push({ label: '$(stop-circle) Cancel build', action: 'subcoder.cancel' });
    }
    const snoozed = snoozeMinutesLeft(switches, now);
    lines.push(switches.off || snoozed
        ? { label: '$(play) Turn completions on', description: snoozed ? `snoozed, ${snoozed} min left` : undefined, action: 'subcoder.toggle' }
        : { label: '$(circle-slash) Turn completions off', action: 'subcoder.toggle' });
    if (!switches.off && !snoozed) {
        lines.push({ label: `$(clock) Snooze for ${SNOOZE_MINUTES} minutes`, action: 'subcoder.snooze' });
    }
    lines.push({ label: '$(symbol-namespace) Toggle completions for the current language', action: 'subcoder.toggleLanguage' });
    lines.push({ label: '$(refresh) Rebuild sub-model', action: 'subcoder.rebuild' });
    lines.push({ label: '$(output) Show logs', action: 'subcoder.showLogs' });
    lines.push({ label: '$(debug-restart) Restart server', action: 'subcoder.restart' });
    return lines;
}
