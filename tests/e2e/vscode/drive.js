// Drives code-server's workbench in headless Chromium (playwright-core) through the extension's
// user journey: status building -> ready, ghost text accepted with Tab, rebuild from the palette,
// status picker. One screenshot per step in $ARTIFACTS. Exit status 0 only when every step passed.
//
// Environment: BUILD_TIMEOUT_S (longest wait for a build, default 300), and journey.js's (CS_URL,
// ARTIFACTS, CHROME, NODE_PATH).
'use strict';
const { journey } = require('./journey');
const { isBuilding, isReady, isTerminal, runCommand } = require('./workbench');

const BUILD_TIMEOUT = 1000 * Number(process.env.BUILD_TIMEOUT_S || 300);
const { check, screenshot, statusHistory, waitForStatus, ghostTextAcceptedWithTab, runAndExit } =
    journey('subcoder-e2e', { width: 1400, height: 900 });

async function steps(page) {
    await screenshot(page, 'workbench');

    // 1. The first build: building -> ready.
    const building = await waitForStatus(page, isBuilding, BUILD_TIMEOUT, 'building');
    check('status bar shows the build', building !== null, building || statusHistory.join(' | '));
    if (building) {
        await screenshot(page, 'building');
    }
    const ready = await waitForStatus(page, isTerminal, BUILD_TIMEOUT, 'ready');
    check('status bar goes to ready', ready !== null && isReady(ready), ready || statusHistory.join(' | '));
    await screenshot(page, 'ready');

    // 2. Ghost text in a file, accepted with Tab.
    await ghostTextAcceptedWithTab(page);

    // 3. Rebuild from the command palette: the build happens again.
    const historyBefore = statusHistory.length;
    await runCommand(page, 'Subcoder: Rebuild sub-model');
    const rebuilding = await waitForStatus(page, isBuilding, BUILD_TIMEOUT, 'building again');
    check('Rebuild sub-model starts a new build', rebuilding !== null, rebuilding || statusHistory.slice(historyBefore).join(' | '));
    if (rebuilding) {
        await screenshot(page, 'rebuilding');
    }
    const readyAgain = await waitForStatus(page, isTerminal, BUILD_TIMEOUT, 'ready again');
    check('the rebuilt sub-model is ready', readyAgain !== null && isReady(readyAgain), readyAgain || '');
    await screenshot(page, 'ready-again');

    // 3b. A build is a notification with a Cancel button: cancelling it stops the build, the sub-model serves on.
    await runCommand(page, 'Subcoder: Rebuild sub-model');
    const buildingForCancel = await waitForStatus(page, isBuilding, BUILD_TIMEOUT, 'building, to cancel');
    const buildToast = page.locator('.notifications-toasts .notification-toast', { hasText: 'building the python sub-model' }).first();
    const toastShown = buildingForCancel !== null && await buildToast.waitFor({ timeout: 15000 }).then(() => true, () => false);
    check('a build shows as a notification', toastShown);
    if (toastShown) {
        await screenshot(page, 'build-notification');
        await buildToast.locator('.monaco-button', { hasText: 'Cancel' }).first().click();
        const afterCancel = await waitForStatus(page, (t) => !isBuilding(t), 30000, 'build cancelled');
        check('Cancel in the notification stops the build', afterCancel !== null && isReady(afterCancel), afterCancel || '');
        await runCommand(page, 'Subcoder: Show status');
        const cancelledRow = await page.locator('.quick-input-list .monaco-list-row', { hasText: 'build cancelled' }).first()
            .waitFor({ timeout: 15000 }).then(() => true, () => false);
        check('Show status says the build was cancelled', cancelledRow);
        await page.keyboard.press('Escape');
    }

    // 4. The status picker lists the detected languages.
    await runCommand(page, 'Subcoder: Show status');
    const row = page.locator('.quick-input-list .monaco-list-row', { hasText: 'python' }).first();
    const statusShown = await row.waitFor({ timeout: 15000 }).then(() => true, () => false);
    const rows = await page.$$eval('.quick-input-list .monaco-list-row', (els) => els.map((e) => (e.textContent || '').trim()));
    check('Show status lists python among the detected languages', statusShown, JSON.stringify(rows));
    check('Show status says whether the sparse kernel runs, and why', rows.some((r) => /Sparse kernel\s*(on|off) \(/.test(r)), JSON.stringify(rows));
    check('Show status offers off and snooze', rows.some((r) => r.includes('Turn completions off')) && rows.some((r) => r.includes('Snooze')));
    await screenshot(page, 'status');
    await page.keyboard.press('Escape');

    // 5. Per-language switch: off for python, then on again.
    await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
    await runCommand(page, 'Subcoder: Toggle completions for the current language');
    const off = await page.locator('.notifications-toasts', { hasText: 'completions off for python' })
        .waitFor({ timeout: 10000 }).then(() => true, () => false);
    check('Toggle turns python completions off', off);
    await screenshot(page, 'toggled-off');
    await runCommand(page, 'Subcoder: Toggle completions for the current language');
    const on = await page.locator('.notifications-toasts', { hasText: 'completions on for python' })
        .waitFor({ timeout: 10000 }).then(() => true, () => false);
    check('Toggle turns them on again', on);

    // 5b. Everything off, then on again (the status-bar menu runs the same command): the item says so.
    await runCommand(page, 'Subcoder: Turn completions on/off');
    const allOff = await waitForStatus(page, (t) => t.includes('Subcoder: off'), 10000, 'off');
    check('Turn completions off: the status bar says off', allOff !== null, statusHistory.slice(-3).join(' | '));
    await screenshot(page, 'all-off');
    await runCommand(page, 'Subcoder: Turn completions on/off');
    const allOn = await waitForStatus(page, isReady, 10000, 'on again');
    check('Turn completions on again: the status bar is back to ready', allOn !== null, statusHistory.slice(-3).join(' | '));

    // 6. Restart: a new server process, which finds the sub-model in the cache.
    const beforeRestart = statusHistory.length;
    await runCommand(page, 'Subcoder: Restart server');
    const restarted = await waitForStatus(page, (t) => !isReady(t), 30000, 'restarting');
    const readyAfterRestart = restarted !== null && await waitForStatus(page, isTerminal, BUILD_TIMEOUT, 'ready after restart');
    check('Restart server comes back ready', Boolean(readyAfterRestart) && isReady(readyAfterRestart),
        statusHistory.slice(beforeRestart).join(' | '));
    await screenshot(page, 'restarted');

    // 7. The logs.
    await runCommand(page, 'Subcoder: Show logs');
    await page.waitForTimeout(1500);
    await screenshot(page, 'logs');
}

runAndExit(steps);
