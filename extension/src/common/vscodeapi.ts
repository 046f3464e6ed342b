/**
 * The few `vscode` calls the extension makes, in one place: the other modules stay free of the
 * editor API where they can, and this is the seam to fake in tests.
 */
import * as vscode from 'vscode';

export function getConfiguration(section: string, scope?: vscode.ConfigurationScope): vscode.WorkspaceConfiguration {
    return vscode.workspace.getConfiguration(section, scope);
}

export function onDidChangeConfiguration(listener: (e: vscode.ConfigurationChangeEvent) => unknown): vscode.Disposable {
    return vscode.workspace.onDidChangeConfiguration(listener);
}

export function firstWorkspaceFolder(): string | undefined {
    return vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
}

export function registerCommand(command: string, callback: (...args: unknown[]) => unknown): vscode.Disposable {
    return vscode.commands.registerCommand(command, callback);
}

export function createLogOutputChannel(name: string): vscode.LogOutputChannel {
    return vscode.window.createOutputChannel(name, { log: true });
}

export function createStatusBarItem(id: string, name: string): vscode.StatusBarItem {
    const item = vscode.window.createStatusBarItem(id, vscode.StatusBarAlignment.Right, 100);
    item.name = name;
    return item;
}

export function showErrorMessage<T extends string>(message: string, ...items: T[]): Thenable<T | undefined> {
    return vscode.window.showErrorMessage(message, ...items);
}

export function showWarningMessage<T extends string>(message: string, ...items: T[]): Thenable<T | undefined> {
    return vscode.window.showWarningMessage(message, ...items);
}

export function showInformationMessage<T extends string>(message: string, ...items: T[]): Thenable<T | undefined> {
    return vscode.window.showInformationMessage(message, ...items);
}

export function createQuickPick<T extends vscode.QuickPickItem>(): vscode.QuickPick<T> {
    return vscode.window.createQuickPick<T>();
}

export function activeLanguageId(): string | undefined {
    return vscode.window.activeTextEditor?.document.languageId;
}

export function writeClipboard(text: string): Thenable<void> {
    return vscode.env.clipboard.writeText(text);
}

export function runInTerminal(name: string, text: string): void {
    const terminal = vscode.window.createTerminal(name);
    terminal.show();
    terminal.sendText(text);
}

export function getExtension<T>(id: string): vscode.Extension<T> | undefined {
    return vscode.extensions.getExtension<T>(id);
}

export function onDidChangeExtensions(listener: () => unknown): vscode.Disposable {
    return vscode.extensions.onDidChange(listener);
}
