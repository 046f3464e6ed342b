/**
 * The inline-completion middleware: asks `completionBlocked` (controls.ts) whether this document gets
 * ghost text now, waits out the debounce, gives the request its time budget, and records the last
 * completion's latency and tokens for the status tooltip.
 */
import type * as vscode from 'vscode';
import { CancellationTokenSource } from 'vscode-languageclient/node';
import { completionBlocked, Controls, debounce, excludedBy, LastCompletion, readControls, Switches } from './controls';
import { SECTION } from './settings';
import { getConfiguration } from './vscodeapi';

/** `InlineCompletionTriggerKind.Invoke`: the user asked (Alt+\), rather than typing. */
const INVOKE = 0;

export type InlineResult = vscode.InlineCompletionItem[] | vscode.InlineCompletionList | null | undefined;
type Next = (
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
) => vscode.ProviderResult<InlineResult>;

export interface InlineHooks {
    switches(): Switches;
    onCompletion(last: LastCompletion): void;
}

export function controlsFor(document: vscode.TextDocument): { languageEnabled: boolean; controls: Controls } {
    const config = getConfiguration(SECTION, document);
    return { languageEnabled: config.get<boolean>('enable', true) !== false, controls: readControls((k) => config.get(k)) };
}

/** Whether a document matches `subcoder.exclude`: its text is then never sent to the server either. */
export function isExcluded(document: vscode.TextDocument): boolean {
    return document.uri.scheme === 'file' && excludedBy(document.uri.fsPath, controlsFor(document).controls.exclude) !== undefined;
}

function tokensOf(result: InlineResult): number | undefined {
    const items = Array.isArray(result) ? result : result?.items;
    const arg = items?.[0]?.command?.arguments?.[0] as { tokens?: unknown } | undefined;
    return typeof arg?.tokens === 'number' ? arg.tokens : undefined;
}

export async function provideInline(
    hooks: InlineHooks,
    document: vscode.TextDocument,
    position: vscode.Position,
    context: vscode.InlineCompletionContext,
    token: vscode.CancellationToken,
    next: Next,
): Promise<InlineResult> {
    const { languageEnabled, controls } = controlsFor(document);
    const invoked = context.triggerKind === INVOKE;
    const facts = { languageEnabled, path: document.uri.scheme === 'file' ? document.uri.fsPath : undefined, invoked, now: Date.now() };
    if (completionBlocked(facts, controls, hooks.switches())) {
        return undefined;
    }
    if (!invoked && !(await debounce(controls.debounceMs, (l) => token.onCancellationRequested(l)))) {
        return undefined;
    }
    // The budget cancels the request like a keystroke would: the client sends $/cancelRequest and the
    // server stops decoding between two tokens.
    const budget = new CancellationTokenSource();
    const linked = token.onCancellationRequested(() => budget.cancel());
    let overBudget = false;
    const timer = setTimeout(() => {
        overBudget = true;
        budget.cancel();
    }, controls.requestBudgetMs);
    const started = Date.now();
    try {
        const result = await next(document, position, context, budget.token as vscode.CancellationToken);
        if (overBudget) {
            hooks.onCompletion({ ms: controls.requestBudgetMs, inBudget: false });
            return undefined;
        }
        if (!token.isCancellationRequested && result) {
            hooks.onCompletion({ ms: Date.now() - started, tokens: tokensOf(result), inBudget: true });
        }
        return result;
    } finally {
        clearTimeout(timer);
        linked.dispose();
        budget.dispose();
    }
}
