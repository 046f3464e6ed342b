/**
 * Subcoder for VS Code: starts `subcoder serve`, shows its state, and wires the palette commands.
 * Everything the extension shows comes from the server over LSP.
 */
import * as os from 'os';
import * as vscode from 'vscode';
import { LanguageClient, State } from 'vscode-languageclient/node';
import { logChannel, traceError, traceInfo, traceWarn } from './common/log';
import {
    chooseInterpreter,
    checkServerInstalled,
    describeInterpreter,
    Interpreter,
    installMessage,
    InstallState,
    ProbeResult,
} from './common/python';
import { ManagedRuntime } from './common/runtimeUi';
import { BuildNotifications, isBuildToken } from './common/buildProgress';
import { otherProviders, otherProvidersMessage, subcoderLanguage } from './common/controls';
import {
    createClient,
    executeServerCommand,
    sendSettings,
    SERVER_COMMAND_CANCEL,
    SERVER_COMMAND_REBUILD,
    SERVER_COMMAND_STATUS,
} from './common/server';
import { classifyChange, SECTION, serverSettings, ServerSettings } from './common/settings';
import { applyProgress, ServerStatus, SNOOZE_MINUTES, statusLines } from './common/status';
import { StatusBar } from './common/statusBar';
import { LineTail } from './common/stderrTail';
import * as api from './common/vscodeapi';
import { spawn } from 'child_process';

let client: LanguageClient | undefined;
let runtime: ManagedRuntime | undefined;
let statusBar: StatusBar | undefined;
let buildNotifications: BuildNotifications | undefined;
let extensionContext: vscode.ExtensionContext | undefined;
let snoozeTimer: NodeJS.Timeout | undefined;
let restartChain: Promise<void> = Promise.resolve();
let restartQueued = false;

function pathContext(): { home: string; workspaceFolder?: string } {
    return { home: os.homedir(), workspaceFolder: api.firstWorkspaceFolder() };
}

function currentSettings(scope?: vscode.ConfigurationScope): ServerSettings {
    const config = api.getConfiguration(SECTION, scope);
    const problems: string[] = [];
    const settings = serverSettings((key) => config.get(key), pathContext(), problems);
    problems.forEach((p) => traceWarn(p));
    return settings;
}

/**
 * `subcoder.python` when set, else the managed runtime (installed on the user's consent; undefined
 * until then). Never the Python extension's selection: that is the user's project environment.
 */
async function interpreter(): Promise<Interpreter | undefined> {
    const setting = api.getConfiguration(SECTION).get<string>('python');
    if (setting?.trim()) {
        return chooseInterpreter({ setting, ctx: pathContext() });
    }
    const python = await runtime!.ensure(true);
    return python ? { path: python, source: 'runtime' } : undefined;
}

function runProbe(command: string, args: string[]): Promise<ProbeResult> {
    return new Promise((resolve) => {
        let stderr = '';
        const child = spawn(command, args, { stdio: ['ignore', 'ignore', 'pipe'] });
        // Own timer rather than spawn's `timeout`, which stays armed when the spawn itself fails.
        const timer = setTimeout(() => child.kill(), 30000);
        const done = (result: ProbeResult) => {
            clearTimeout(timer);
            resolve(result);
        };
        child.stderr.on('data', (d) => (stderr += String(d)));
        child.on('error', (err: NodeJS.ErrnoException) => done({ code: null, error: { code: err.code, message: err.message }, stderr }));
        child.on('close', (code) => done({ code, stderr }));
    });
}

async function offerInstall(state: InstallState): Promise<void> {
    const message = installMessage(state);
    if (!message) {
        return;
    }
    traceError(message);
    if (state.kind !== 'missing-module') {
        const pick = await api.showErrorMessage(message, 'Show logs');
        if (pick === 'Show logs') {
            logChannel().show();
        }
        return;
    }
    const pick = await api.showErrorMessage(message, 'Install in terminal', 'Copy command', 'Show logs');
    if (pick === 'Install in terminal') {
        api.runInTerminal('Subcoder install', state.install);
        const next = await api.showInformationMessage('When the install has finished, restart the Subcoder server.', 'Restart server');
        if (next) {
            await restartServer('installed');
        }
    } else if (pick === 'Copy command') {
        await api.writeClipboard(state.install);
    } else if (pick === 'Show logs') {
        logChannel().show();
    }
}

async function stopClient(): Promise<void> {
    const old = client;
    client = undefined;
    if (old) {
        try {
            await old.stop(5000);
        } catch (err) {
            traceWarn(`Stopping the server: ${err instanceof Error ? err.message : String(err)}`);
        }
    }
}

async function startServer(reason: string): Promise<void> {
    const bar = statusBar!;
    await stopClient();
    bar.model.client = 'starting';
    bar.model.server = undefined;
    bar.model.progress.clear();
    bar.model.problem = undefined;
    bar.render();

    const interp = await interpreter();
    if (!interp) {
        bar.model.client = 'not-installed';
        bar.model.problem = runtime?.problem;
        bar.render();
        return;
    }
    traceInfo(`Starting the server (${reason}) with ${describeInterpreter(interp)}`);
    const installed = await checkServerInstalled(interp.path, runProbe);
    if (installed.kind !== 'ok') {
        bar.model.client = 'not-installed';
        bar.model.problem = installMessage(installed);
        bar.render();
        void offerInstall(installed);
        return;
    }

    const stderrTail = new LineTail();
    const reportStderr = (why: string) => {
        const tail = stderrTail.drain();
        if (tail.length) {
            traceError(`${why}; the server's last stderr lines:\n${tail.join('\n')}`);
        }
    };
    const next = createClient({
        stderrTail,
        python: interp.path,
        // Never the workspace: nothing in it may be importable by the server.
        cwd: os.tmpdir(),
        settings: currentSettings(),
        channel: logChannel(),
        hooks: {
            onStatus: (status) => {
                bar.model.server = status;
                bar.render();
            },
            onProgress: (token, value) => {
                applyProgress(bar.model, token, value);
                if (isBuildToken(token)) {
                    buildNotifications?.apply(token, value);
                }
                bar.render();
            },
            inline: {
                switches: () => bar.model.switches,
                onCompletion: (last) => {
                    bar.model.last = last;
                    bar.render();
                },
            },
            settingsFor: (scopeUri) => currentSettings(scopeUri ? vscode.Uri.parse(scopeUri) : undefined),
        },
    });
    next.onDidChangeState((e) => {
        if (client !== next) {
            return;
        }
        if (e.newState === State.Running) {
            bar.model.client = 'running';
        } else if (e.newState === State.Stopped) {
            reportStderr('The server stopped');
            bar.model.client = 'stopped';
            bar.model.progress.clear();
            buildNotifications?.clear();
        } else {
            bar.model.client = 'starting';
        }
        bar.render();
    });
    client = next;
    try {
        await next.start();
    } catch (err) {
        traceError('The server did not start', err);
        reportStderr('The server did not start');
        if (client === next) {
            bar.model.client = 'stopped';
            bar.model.problem = `The server did not start: ${err instanceof Error ? err.message : String(err)}.`;
            bar.render();
        }
    }
}

/** Restarts the server; requests made while one restart waits are folded into it. */
function restartServer(reason: string): Promise<void> {
    if (restartQueued) {
        return restartChain;
    }
    restartQueued = true;
    restartChain = restartChain.then(async () => {
        restartQueued = false;
        try {
            await startServer(reason);
        } catch (err) {
            traceError('Restarting the server failed', err);
        }
    });
    return restartChain;
}

function runningClient(): LanguageClient | undefined {
    if (client?.state === State.Running) {
        return client;
    }
    void api.showWarningMessage('Subcoder: the server is not running.', 'Show logs', 'Restart server').then((pick) => {
        if (pick === 'Show logs') {
            logChannel().show();
        } else if (pick === 'Restart server') {
            void restartServer('user');
        }
    });
    return undefined;
}

async function reinstallRuntime(): Promise<void> {
    if (api.getConfiguration(SECTION).get<string>('python')?.trim()) {
        void api.showInformationMessage('Subcoder: "subcoder.python" is set, so the server does not use Subcoder\'s own runtime. Clear the setting to use it.');
        return;
    }
    // The server runs from the venv: stop it before the venv goes (Windows keeps open files locked).
    await stopClient();
    await runtime!.reinstall();
    await restartServer('runtime reinstalled');
}

/** Run one of the server's commands on the user's behalf; `failed` says what went wrong, and `tell` shows it. */
async function runServerCommand(command: string, requested: string, failed: string, tell: boolean): Promise<void> {
    const c = runningClient();
    if (!c) {
        return;
    }
    traceInfo(requested);
    try {
        await executeServerCommand(c, command);
    } catch (err) {
        traceError(failed, err);
        if (tell) {
            void api.showErrorMessage(`Subcoder: ${failed.toLowerCase()}: ${err instanceof Error ? err.message : String(err)}`);
        }
    }
}

function rebuild(): Promise<void> {
    return runServerCommand(SERVER_COMMAND_REBUILD, 'Rebuild of the sub-model requested', 'Rebuild failed', true);
}

function cancelBuild(): Promise<void> {
    // The progress notification already closed: a failed cancel goes to the log only.
    return runServerCommand(SERVER_COMMAND_CANCEL, 'Build cancelled by the user', 'Cancelling the build failed', false);
}

const OFF_KEY = 'subcoder.off';

/** Completions on or off everywhere (kept across sessions); turning them on also ends a snooze. */
async function toggleCompletions(): Promise<void> {
    const model = statusBar!.model;
    const on = model.switches.off || model.switches.snoozedUntil !== undefined;
    setSnooze(undefined);
    model.switches.off = !on;
    await extensionContext?.globalState.update(OFF_KEY, model.switches.off);
    statusBar!.render();
    void api.showInformationMessage(`Subcoder: completions ${on ? 'on' : 'off'}.`);
}

function setSnooze(until: number | undefined): void {
    clearInterval(snoozeTimer);
    snoozeTimer = undefined;
    statusBar!.model.switches.snoozedUntil = until;
    if (until !== undefined) {
        // Re-rendered each minute for the countdown; the snooze ends by itself.
        snoozeTimer = setInterval(() => {
            if (Date.now() >= until) {
                setSnooze(undefined);
            }
            statusBar?.render();
        }, 60000);
    }
    statusBar!.render();
}

function snooze(): void {
    setSnooze(Date.now() + SNOOZE_MINUTES * 60000);
    void api.showInformationMessage(`Subcoder: completions snoozed for ${SNOOZE_MINUTES} minutes.`, 'Turn on now').then((pick) => {
        if (pick) {
            setSnooze(undefined);
        }
    });
}

const PROVIDERS_SHOWN_KEY = 'subcoder.otherProvidersShown';

/** Once per set of other inline providers installed and enabled: say that they compete for ghost text and how to choose. */
function checkOtherProviders(context: vscode.ExtensionContext): void {
    const names = otherProviders(vscode.extensions.all.map((e) => e.id));
    const message = otherProvidersMessage(names);
    const key = names.join(',');
    if (!message || context.globalState.get<string>(PROVIDERS_SHOWN_KEY) === key) {
        return;
    }
    void context.globalState.update(PROVIDERS_SHOWN_KEY, key);
    traceWarn(message);
    void api.showInformationMessage(message, 'Turn Subcoder off', 'Keep both').then((pick) => {
        if (pick === 'Turn Subcoder off' && !statusBar!.model.switches.off) {
            void toggleCompletions();
        }
    });
}

type StatusPick = vscode.QuickPickItem & { action?: string };

async function showStatus(): Promise<void> {
    const c = runningClient();
    if (!c) {
        return;
    }
    let status: ServerStatus | undefined;
    try {
        status = (await executeServerCommand<ServerStatus | null>(c, SERVER_COMMAND_STATUS)) ?? undefined;
    } catch (err) {
        traceWarn(`subcoder.status failed: ${err instanceof Error ? err.message : String(err)}`);
    }
    status = status ?? statusBar?.model.server;
    if (!status) {
        void api.showInformationMessage('Subcoder: the server has not reported a status yet.');
        return;
    }
    const pick = api.createQuickPick<StatusPick>();
    pick.title = 'Subcoder status';
    pick.placeholder = 'Pick an action, or Escape to close';
    pick.matchOnDescription = true;
    pick.items = statusLines(status, statusBar!.model.switches).map((line) =>
        line.separator
            ? { label: line.label, kind: vscode.QuickPickItemKind.Separator }
            : { label: line.label, description: line.description, detail: line.detail, action: line.action },
    );
    pick.onDidAccept(() => {
        const action = pick.selectedItems[0]?.action;
        pick.hide();
        if (action) {
            void vscode.commands.executeCommand(action);
        }
    });
    pick.onDidHide(() => pick.dispose());
    pick.show();
}

async function toggleLanguage(): Promise<void> {
    const languageId = api.activeLanguageId();
    if (!languageId) {
        void api.showInformationMessage('Subcoder: open a file to toggle completions for its language.');
        return;
    }
    const config = api.getConfiguration(SECTION, { languageId });
    const enabled = config.get<boolean>('enable', true) !== false;
    await config.update('enable', !enabled, vscode.ConfigurationTarget.Global, true);
    const server = statusBar?.model.server;
    if (enabled && server?.state === 'building' && server.language && server.language === subcoderLanguage(languageId)) {
        await cancelBuild(); // its sub-model would serve nothing now; Rebuild (or the next start) builds it
    }
    void api.showInformationMessage(`Subcoder: completions ${enabled ? 'off' : 'on'} for ${languageId}.`);
}

async function onConfigurationChanged(e: vscode.ConfigurationChangeEvent): Promise<void> {
    const change = classifyChange((key) => e.affectsConfiguration(key));
    if (change === 'restart') {
        await restartServer('subcoder.python changed');
    } else if (change === 'forward' && client?.state === State.Running) {
        traceInfo('Settings changed; sending them to the server');
        await sendSettings(client, currentSettings());
    }
}

export async function activate(context: vscode.ExtensionContext): Promise<void> {
    const channel = logChannel();
    context.subscriptions.push(channel);
    extensionContext = context;
    statusBar = new StatusBar();
    statusBar.model.switches.off = context.globalState.get<boolean>(OFF_KEY, false);
    statusBar.render();
    context.subscriptions.push(statusBar);
    buildNotifications = new BuildNotifications(() => cancelBuild());
    context.subscriptions.push(buildNotifications, { dispose: () => clearInterval(snoozeTimer) });
    runtime = new ManagedRuntime(context, {
        onInstalling: (installing) => {
            statusBar!.model.client = installing ? 'starting' : 'not-installed';
            statusBar!.model.server = undefined;
            statusBar!.model.problem = installing ? undefined : runtime?.problem;
            statusBar!.render();
        },
        onReady: () => restartServer('runtime installed'),
    });
    traceInfo(`Subcoder ${context.extension.packageJSON.version} activating`);

    context.subscriptions.push(
        api.registerCommand('subcoder.rebuild', rebuild),
        api.registerCommand('subcoder.restart', () => restartServer('user')),
        api.registerCommand('subcoder.reinstallRuntime', reinstallRuntime),
        api.registerCommand('subcoder.showLogs', () => channel.show()),
        api.registerCommand('subcoder.showStatus', showStatus),
        api.registerCommand('subcoder.toggleLanguage', toggleLanguage),
        api.registerCommand('subcoder.cancel', cancelBuild),
        api.registerCommand('subcoder.toggle', toggleCompletions),
        api.registerCommand('subcoder.snooze', snooze),
        api.onDidChangeExtensions(() => checkOtherProviders(context)),
        api.onDidChangeConfiguration((e) => void onConfigurationChanged(e)),
    );
    checkOtherProviders(context);
    await restartServer('activation');
}

export async function deactivate(): Promise<void> {
    await stopClient();
}
