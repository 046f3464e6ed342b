/**
 * The managed runtime in the editor: asks before the first install, shows it as a cancellable
 * progress notification with pip's stages, offers the log when it fails, and reinstalls on request.
 */
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import { traceError, traceInfo } from './log';
import { selectedInterpreter } from './pythonExtension';
import { runtimeSettings } from './runtime';
import { installRuntime, InstallOutcome, removeRuntime, RuntimeEnv, runtimePaths, runtimeState } from './runtimeInstall';
import { expandPath, SECTION } from './settings';

export const SET_UP = 'Set up runtime';
const SHOW_LOG = 'Show log';
const RETRY = 'Retry';

export interface RuntimeHooks {
    /** An install started, or ended without a runtime (`problem` says why). */
    onInstalling(installing: boolean): void;
    /** A runtime was installed outside a server start (the user's answer came later): start the server. */
    onReady(): Promise<void>;
}

export class ManagedRuntime {
    /** One install at a time in this window; a second caller waits for the first. */
    private running: Promise<string | undefined> | undefined;
    private offering = false;
    /** Why the last attempt left no runtime, for the status bar's tooltip. */
    problem: string | undefined;

    constructor(private readonly context: vscode.ExtensionContext, private readonly hooks: RuntimeHooks) {}

    private async env(): Promise<RuntimeEnv> {
        return {
            storageDir: this.context.globalStorageUri.fsPath,
            bundleDir: path.join(this.context.extensionPath, 'dist'),
            platform: process.platform,
            settings: runtimeSettings((key) => vscode.workspace.getConfiguration(SECTION).get(key), (p) => expandPath(p, { home: os.homedir() })),
            pythonExtension: await selectedInterpreter().catch(() => undefined),
        };
    }

    /**
     * The runtime's interpreter when it is installed; brings an outdated one (a new extension
     * version) up to date first. When there is none, `ask` offers to set it up and returns at once:
     * the answer may come much later, and the install then calls `onReady`.
     */
    async ensure(ask: boolean): Promise<string | undefined> {
        if (this.running) {
            return this.running;
        }
        const env = await this.env();
        const state = await runtimeState(env);
        if (state.kind === 'ready') {
            this.problem = undefined;
            return state.python;
        }
        traceInfo(`Python runtime: ${state.why}`);
        if (state.kind === 'outdated') {
            return this.install(env);
        }
        this.problem ??= 'The Python runtime is not set up yet: run "Subcoder: Reinstall runtime", or set "subcoder.python".';
        if (ask && !this.offering) {
            void this.offer();
        }
        return undefined;
    }

    private async offer(): Promise<void> {
        this.offering = true;
        try {
            const pick = await vscode.window.showInformationMessage(
                'Subcoder runs its models in a Python environment of its own. Set it up now? It needs Python 3.11+ and ' +
                'installs PyTorch (CPU build) and the subcoder package into the extension\'s storage (about 1.5 GB).',
                SET_UP, 'Not now');
            if (pick === SET_UP) {
                await this.installThenReady();
            }
        } finally {
            this.offering = false;
        }
    }

    private async installThenReady(): Promise<void> {
        if (await this.install(await this.env())) {
            await this.hooks.onReady();
        }
    }

    /** Deletes the venv and creates it again (the palette's "Subcoder: Reinstall runtime"). */
    async reinstall(): Promise<string | undefined> {
        await this.running?.catch(() => undefined);
        const env = await this.env();
        traceInfo(`Reinstalling the Python runtime in ${runtimePaths(env.storageDir, env.platform).venv}`);
        await removeRuntime(env, { progress: () => undefined });
        return this.install(env);
    }

    private install(env: RuntimeEnv): Promise<string | undefined> {
        if (!this.running) {
            this.running = this.installWithProgress(env).finally(() => (this.running = undefined));
        }
        return this.running;
    }

    private async installWithProgress(env: RuntimeEnv): Promise<string | undefined> {
        const started = Date.now();
        this.hooks.onInstalling(true);
        const outcome = await vscode.window.withProgress<InstallOutcome>(
            { location: vscode.ProgressLocation.Notification, title: 'Subcoder: setting up the Python runtime', cancellable: true },
            (progress, token) => {
                const abort = new AbortController();
                token.onCancellationRequested(() => abort.abort());
                return installRuntime(env, {
                    progress: (message, increment) => progress.report({ message, increment }),
                    waiting: () => progress.report({ message: 'waiting for another window\'s install' }),
                }, abort.signal);
            });
        const seconds = Math.round((Date.now() - started) / 1000);
        if (outcome.kind === 'ready') {
            traceInfo(`Python runtime ready in ${seconds} s: ${outcome.python}`);
            this.problem = undefined;
            return outcome.python;
        }
        if (outcome.kind === 'cancelled') {
            traceInfo('Setting up the Python runtime was cancelled');
            this.problem = 'Setting up the Python runtime was cancelled: run "Subcoder: Reinstall runtime" to try again.';
            this.hooks.onInstalling(false);
            return undefined;
        }
        traceError(`Setting up the Python runtime failed after ${seconds} s: ${outcome.message}${outcome.log ? ` (log: ${outcome.log})` : ''}`);
        this.problem = `Setting up the Python runtime failed: ${outcome.message}`;
        this.hooks.onInstalling(false);
        // Not awaited: the caller (a server start) goes on while the message waits for the user.
        void vscode.window.showErrorMessage(`Subcoder: ${outcome.message}`, ...(outcome.log ? [SHOW_LOG] : []), RETRY).then(async (pick) => {
            if (pick === SHOW_LOG && outcome.log) {
                await vscode.window.showTextDocument(vscode.Uri.file(outcome.log), { preview: true });
            } else if (pick === RETRY) {
                await this.installThenReady();
            }
        });
        return undefined;
    }
}
