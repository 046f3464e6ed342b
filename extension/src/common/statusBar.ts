/** The status bar item: renders `statusView(model)` and nothing else. */
import { Disposable, StatusBarItem, ThemeColor } from 'vscode';
import { initialModel, StatusModel, statusView } from './status';
import { createStatusBarItem } from './vscodeapi';

export class StatusBar implements Disposable {
    readonly model: StatusModel = initialModel();
    private readonly item: StatusBarItem;

    constructor() {
        this.item = createStatusBarItem('subcoder.status', 'Subcoder');
        this.render();
        this.item.show();
    }

    /** Re-renders after the model changed. */
    render(): void {
        const view = statusView(this.model);
        this.item.text = view.text;
        this.item.tooltip = view.tooltip;
        this.item.command = view.command;
        this.item.backgroundColor =
            view.severity === 'error' ? new ThemeColor('statusBarItem.errorBackground')
            : view.severity === 'warning' ? new ThemeColor('statusBarItem.warningBackground')
            : undefined;
    }

    dispose(): void {
        this.item.dispose();
    }
}
