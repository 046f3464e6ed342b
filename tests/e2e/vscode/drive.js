// Drives code-server's workbench in headless Chromium (playwright-core) through the extension's
// user journey: status building -> ready, ghost text accepted with Tab, rebuild from the palette,
// status picker. One screenshot per step in $ARTIFACTS. Exit status 0 only when every step passed.
//
// Environment: CS_URL (workbench URL with ?folder=), ARTIFACTS (folder), CHROME (browser binary),
// BUILD_TIMEOUT_S (longest wait for a build, default 300), NODE_PATH (where playwright-core is).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const URL = process.env.CS_URL || 'http://127.0.0.1:8080/';
const ARTIFACTS = process.env.ARTIFACTS || fs.mkdtempSync(path.join(os.tmpdir(), 'subcoder-e2e-'));
const BUILD_TIMEOUT = 1000 * Number(process.env.BUILD_TIMEOUT_S || 300);
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s]`, ...a);

const results = [];
let shot = 0;
async function screenshot(page, name) {
    shot += 1;
    const file = path.join(ARTIFACTS, `${String(shot).padStart(2, '0')}-${name}.png`);
    await page.screenshot({ path: file });
    log('screenshot', path.basename(file));
}
function check(name, ok, detail = '') {
    results.push({ name, ok, detail });
    log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
    return ok;
}

// --- the status bar item --------------------------------------------------------------------------
const statusHistory = [];
/** Polls the status bar until `predicate(text)`; records every distinct text seen. */
async function waitForStatus(page, predicate, timeout, what) {
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
        const text = await statusText(page).catch(() => null);
        if (text !== null && text !== statusHistory[statusHistory.length - 1]) {
            statusHistory.push(text);
            log(`status bar: "${text}"`);
        }
        if (text !== null && predicate(text)) {
            return text;
        }
        await page.waitForTimeout(100);
    }
    log(`timed out waiting for status: ${what}`);
    return null;
}
const { isBuilding, isReady, isTerminal, runCommand, statusText, typeFunctionAndWaitForGhost, editorLines, cursor } = require('./workbench');

async function main() {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'chromium-profile-'));
    const context = await chromium.launchPersistentContext(profile, {
        executablePath: process.env.CHROME || '/usr/bin/chromium',
        headless: true,
        viewport: { width: 1400, height: 900 },
        // No sandbox (root in a container); the rest keeps Chromium off the (closed) network.
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
            '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (e) => log('page error:', String(e).slice(0, 200)));
    try {
        await journey(page);
    } catch (err) {
        check('journey completed without exceptions', false, String(err && err.stack || err).slice(0, 500));
        await screenshot(page, 'failure').catch(() => {});
    } finally {
        fs.writeFileSync(path.join(ARTIFACTS, 'results.json'), JSON.stringify({ results, statusHistory }, null, 2));
        await context.close();
    }
}

async function journey(page) {
    await page.goto(URL);
    await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
    // The workbench takes its keybindings a moment after it appears.
    await page.waitForTimeout(3000);
    log('workbench loaded');
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
    const ghost = await typeFunctionAndWaitForGhost(page, log);
    check('ghost text appears', ghost.trim().length > 0, JSON.stringify(ghost));
    await screenshot(page, 'ghost-text');
    if (ghost.trim()) {
        // The view lines show ghost text as if typed: accepting is seen in the cursor position
        // (status bar "Ln L, Col C") moving past the suggestion, and the line text holding it.
        const before = await cursor(page);
        await page.keyboard.press('Tab');
        await page.waitForTimeout(500);
        const after = await cursor(page);
        const lines = ghost.split('\n');
        const expected = lines.length === 1
            ? { line: before.line, col: before.col + lines[0].length }
            : { line: before.line + lines.length - 1, col: lines[lines.length - 1].length + 1 };
        const text = (await editorLines(page)).join('\n');
        const accepted = after.line === expected.line && after.col >= expected.col - 1 && text.includes(lines[0]);
        check('Tab accepts the ghost text', accepted,
            `cursor ${before.line}:${before.col} -> ${after.line}:${after.col}, expected about ${expected.line}:${expected.col}`);
        await screenshot(page, 'accepted');
    }

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

main().then(() => {
    const failed = results.filter((r) => !r.ok);
    log(`${results.length - failed.length}/${results.length} checks passed; artifacts in ${ARTIFACTS}`);
    process.exit(failed.length || results.length === 0 ? 1 : 0);
}, (err) => {
    console.error(err);
    process.exit(2);
});
