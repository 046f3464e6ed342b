/**
 * A sub-model build as a notification with a Cancel button. The server reports builds as LSP work-done
 * progress, which the language client would show in the window's progress area, where there is no
 * cancel: the middleware in server.ts hands the build's reports here instead.
 */
import * as vscode from 'vscode';
import { ProgressValue } from './status';

/** Tokens of the server's build progress (server/server.py names them so). */
export const BUILD_TOKEN_PREFIX = 'subcoder-build-';

export function isBuildToken(token: string | number): boolean {
    return String(token).startsWith(BUILD_TOKEN_PREFIX);
}

interface Shown {
    progress?: vscode.Progress<{ message?: string; increment?: number }>;
    percent: number;
    finish: () => void;
}

export class BuildNotifications implements vscode.Disposable {
    private readonly shown = new Map<string, Shown>();

    /** `cancel` asks the server to stop the build (its `subcoder.cancelBuild` command). */
    constructor(private readonly cancel: () => Promise<unknown>) {}

    apply(token: string | number, value: ProgressValue): void {
        const key = String(token);
        if (value.kind === 'begin') {
            this.begin(key, value.title, value.message);
            this.report(key, value.percentage, value.message);
        } else if (value.kind === 'report') {
            this.report(key, value.percentage, value.message);
        } else {
            this.end(key);
        }
    }

    private begin(key: string, title: string, message?: string): void {
        this.end(key);
        const entry: Shown = { percent: 0, finish: () => undefined };
        this.shown.set(key, entry);
        void vscode.window.withProgress(
            { location: vscode.ProgressLocation.Notification, title: title.replace(/^subcoder: /, 'Subcoder: '), cancellable: true },
            (progress, cancelled) =>
                new Promise<void>((resolve) => {
                    entry.progress = progress;
                    entry.finish = resolve;
                    if (message) {
                        progress.report({ message });
                    }
                    cancelled.onCancellationRequested(() => {
                        resolve();
                        void this.cancel();
                    });
                }),
        );
    }

    private report(key: string, percent: number | undefined, message: string | undefined): void {
        const entry = this.shown.get(key);
        if (!entry?.progress) {
            return;
        }
        const next = percent === undefined ? entry.percent : Math.max(entry.percent, Math.min(100, percent));
        entry.progress.report({ message, increment: next - entry.percent });
        entry.percent = next;
    }

    private end(key: string): void {
        const entry = this.shown.get(key);
        if (entry) {
            this.shown.delete(key);
            entry.finish();
        }
    }

    /** Every notification closed (the server stopped). */
    clear(): void {
        for (const key of [...this.shown.keys()]) {
            this.end(key);
        }
    }

    dispose(): void {
        this.clear();
    }
}
