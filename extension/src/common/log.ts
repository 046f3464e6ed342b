/** The one "Subcoder" LogOutputChannel: the server's log messages and the client's own trace. */
import type { LogOutputChannel } from 'vscode';
import { createLogOutputChannel } from './vscodeapi';

export const CHANNEL_NAME = 'Subcoder';

let channel: LogOutputChannel | undefined;

export function logChannel(): LogOutputChannel {
    if (!channel) {
        channel = createLogOutputChannel(CHANNEL_NAME);
    }
    return channel;
}

export function traceInfo(message: string): void {
    logChannel().info(message);
}

export function traceWarn(message: string): void {
    logChannel().warn(message);
}

export function traceError(message: string, error?: unknown): void {
    const detail = error instanceof Error ? `: ${error.message}` : error !== undefined ? `: ${String(error)}` : '';
    logChannel().error(`${message}${detail}`);
}
