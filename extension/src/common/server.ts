/**
 * Creating the language client for `subcoder serve`: how the process starts, which documents it
 * sees, how settings reach it, and the middleware that keeps ghost text per-language and progress
 * visible in the status bar.
 */
import * as readline from 'readline';
import type { LogOutputChannel } from 'vscode';
import {
    ExecuteCommandRequest,
    LanguageClient,
    LanguageClientOptions,
    RevealOutputChannelOn,
    ServerOptions,
} from 'vscode-languageclient/node';
import { isBuildToken } from './buildProgress';
import { InlineHooks, isExcluded, provideInline } from './inline';
import { SERVER_ARGS } from './python';
import { initializationOptions, SECTION, ServerSettings } from './settings';
import { ProgressValue, ServerStatus } from './status';
import { LineTail } from './stderrTail';

export const CLIENT_ID = 'subcoder';
export const CLIENT_NAME = 'Subcoder';
export const STATUS_NOTIFICATION = 'subcoder/status';
export const SERVER_COMMAND_REBUILD = 'subcoder.rebuildSubModel';
export const SERVER_COMMAND_STATUS = 'subcoder.status';
export const SERVER_COMMAND_CANCEL = 'subcoder.cancelBuild';

export interface ServerHooks {
    onStatus(status: ServerStatus): void;
    onProgress(token: string | number, value: ProgressValue): void;
    /** The inline-completion controls: on/off and snooze, and where the last completion is reported. */
    inline: InlineHooks;
    /** The server's section for a `workspace/configuration` request (scope: a document URI or none). */
    settingsFor(scopeUri?: string): ServerSettings;
}

export function createClient(opts: {
    python: string;
    cwd?: string;
    settings: ServerSettings;
    channel: LogOutputChannel;
    hooks: ServerHooks;
    stderrTail: LineTail;
}): LanguageClient {
    const lines = (input: NodeJS.ReadableStream, onLine: (line: string) => void) =>
        readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on('line', onLine);
    const serverOptions: ServerOptions = {
        // No `transport` field: with one, the client would append `--stdio` to the arguments.
        command: opts.python,
        args: [...SERVER_ARGS],
        options: { cwd: opts.cwd, env: { ...process.env, PYTHONUNBUFFERED: '1' } },
    };
    const clientOptions: LanguageClientOptions = {
        // Every local document: the server decides per language what it can complete.
        documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
        initializationOptions: initializationOptions(opts.settings),
        outputChannel: opts.channel,
        traceOutputChannel: opts.channel,
        revealOutputChannelOn: RevealOutputChannelOn.Never,
        stdioOptions: {
            // stdout carries JSON-RPC; anything else printed there is shown as is.
            stdout: (input, channel) => lines(input, (line) => channel.info(line)),
            stderr: (input, channel) => lines(input, (line) => {
                channel.trace(`[server stderr] ${line}`);
                opts.stderrTail.push(line);
            }),
        },
        middleware: {
            provideInlineCompletionItems: (document, position, context, token, next) =>
                provideInline(opts.hooks.inline, document, position, context, token, next),
            // Secrets (subcoder.exclude) never reach the server: not even their text in didOpen/didChange.
            didOpen: (document, next) => (isExcluded(document) ? Promise.resolve() : next(document)),
            didChange: (event, next) => (isExcluded(event.document) ? Promise.resolve() : next(event)),
            didSave: (document, next) => (isExcluded(document) ? Promise.resolve() : next(document)),
            // The server also offers classic completion for editors without ghost text; in VS Code
            // its items would open the suggest widget, which hides the ghost text.
            provideCompletionItem: () => undefined,
            handleWorkDoneProgress: (token, params, next) => {
                opts.hooks.onProgress(token, params as ProgressValue);
                // A build is shown as a cancellable notification (buildProgress.ts), not in the window's
                // progress area; its end still goes to the client, which forgets the token then.
                if (!isBuildToken(token) || (params as ProgressValue).kind === 'end') {
                    next(token, params);
                }
            },
            workspace: {
                configuration: async (params, token, next) => {
                    const fromEditor = await next(params, token);
                    if (!Array.isArray(fromEditor)) {
                        return fromEditor;
                    }
                    return params.items.map((item, i) =>
                        item.section === SECTION ? opts.hooks.settingsFor(item.scopeUri) : fromEditor[i],
                    );
                },
            },
        },
        connectionOptions: { maxRestartCount: 4 },
    };
    const client = new LanguageClient(CLIENT_ID, CLIENT_NAME, serverOptions, clientOptions);
    client.onNotification(STATUS_NOTIFICATION, (status: ServerStatus) => opts.hooks.onStatus(status));
    return client;
}

/** Runs one of the server's `workspace/executeCommand` commands. */
export function executeServerCommand<T>(client: LanguageClient, command: string, args: unknown[] = []): Promise<T> {
    return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args }) as Promise<T>;
}

/** Sends the server its section after a settings change. */
export function sendSettings(client: LanguageClient, settings: ServerSettings): Promise<void> {
    return client.sendNotification('workspace/didChangeConfiguration', { settings: { [SECTION]: settings } });
}
