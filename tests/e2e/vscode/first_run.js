// A new user's first run, driven in code-server's workbench (headless Chromium, playwright-core):
// the extension asks to set up its Python runtime -> "Set up runtime" -> the install's progress
// notification -> status building -> ready -> ghost text accepted with Tab -> "Subcoder: Reinstall
// runtime" starts a new install, cancelled from its notification. A full screenshot per step in
// $ARTIFACTS, and a cropped one (*-crop.png) of the part the README shows.
// Exit status 0 only when every check passed; results.json lists them.
//
// Environment: INSTALL_TIMEOUT_S (runtime install, default 420), BUILD_TIMEOUT_S (default 180), and
// journey.js's (CS_URL, ARTIFACTS, CHROME, NODE_PATH).
'use strict';
const { journey } = require('./journey');
const { isBuilding, isReady, isTerminal, runCommand, statusText } = require('./workbench');

const INSTALL_TIMEOUT = 1000 * Number(process.env.INSTALL_TIMEOUT_S || 420);
const BUILD_TIMEOUT = 1000 * Number(process.env.BUILD_TIMEOUT_S || 180);
const VIEWPORT = { width: 1280, height: 800 };
const { log, check, screenshot, statusHistory, waitForStatus, ghostTextAcceptedWithTab, runAndExit } =
    journey('subcoder-first-run', VIEWPORT);
const timings = {};
const progressHistory = [];

// --- what the workbench shows ----------------------------------------------------------------------
const toast = (page, text) => page.locator('.notifications-toasts .notification-toast', { hasText: text }).first();

/** The notifications in view, and the right part of the status bar below them. */
async function toastsBox(page) {
    const box = await page.locator('.notifications-toasts').boundingBox();
    const top = box ? box.y - 12 : VIEWPORT.height - 200;
    return { x: VIEWPORT.width - 620, y: top, width: 620, height: VIEWPORT.height - top };
}
const statusBarBox = () => ({ x: VIEWPORT.width - 640, y: VIEWPORT.height - 30, width: 640, height: 30 });

/** The runtime install's progress notification, or null while none is shown. */
async function installProgress(page) {
    return page.evaluate(() => [...document.querySelectorAll('.notifications-toasts .notification-list-item-message')]
        .map((e) => (e.textContent || '').replace(/\s+/g, ' ').trim()).find((t) => t.includes('Python runtime')) || null).catch(() => null);
}

/** Polls until `predicate(statusText)`; records every distinct text and progress message seen, and
 * hands each progress message to `onProgress`. */
async function waitFor(page, predicate, timeout, what, onProgress) {
    return waitForStatus(page, predicate, timeout, what, async () => {
        const progress = await installProgress(page);
        if (progress && progress !== progressHistory[progressHistory.length - 1]) {
            progressHistory.push(progress);
            log(`notification: "${progress}"`);
        }
        if (onProgress) {
            await onProgress(progress);
        }
    });
}

/** The editor lines around the cursor (the ghost text and a few lines of context). */
async function editorBox(page) {
    const editor = await page.locator('.editor-instance .monaco-editor').first().boundingBox();
    const cur = await page.locator('.editor-instance .monaco-editor .cursor').first().boundingBox().catch(() => null);
    const y = cur ? cur.y - 150 : editor.y;
    return { x: editor.x, y, width: Math.min(760, editor.width), height: 230 };
}

async function steps(page) {
    // 1. The offer: nothing is installed yet, the extension asks before installing.
    const offer = toast(page, 'Set it up now?');
    const offered = await offer.waitFor({ timeout: 60000 }).then(() => true, () => false);
    check('the extension offers to set up its Python runtime', offered, offered ? '' : String(await statusText(page)));
    await screenshot(page, 'install-prompt', await toastsBox(page));
    if (!offered) {
        return;
    }
    const notInstalled = await statusText(page);
    check('status bar says not installed while it waits for the answer', /not installed/.test(notInstalled || ''), notInstalled || '');
    await offer.locator('.monaco-button', { hasText: 'Set up runtime' }).click();
    // Away from the notifications, so that no hover tooltip covers the next screenshots.
    await page.mouse.move(300, 300);
    const installStarted = Date.now();

    // 2. The install, as a progress notification with pip's stages.
    let progressShot = false;
    const shootProgress = async (progress) => {
        if (!progressShot && progress && /Installing subcoder and its dependencies: installing/.test(progress)) {
            progressShot = true;
            await screenshot(page, 'runtime-progress', await toastsBox(page));
        }
    };
    // The click reaches the extension host a moment later (longer on a busy machine): until the status
    // bar leaves "not installed", that text is the state before the answer, not the install's outcome.
    const installing = await waitFor(page, (t) => !/not installed/.test(t), 30000, 'the install to start', shootProgress);
    const building = installing && await waitFor(page, (t) => isBuilding(t) || isTerminal(t), INSTALL_TIMEOUT,
        'the runtime install and the build to start', shootProgress);
    timings.runtimeInstallAndServerStartS = Math.round((Date.now() - installStarted) / 1000);
    const stages = progressHistory.join(' | ');
    check('the install shows its steps', ['Creating the virtual environment', 'Installing torch (CPU build)', 'Installing subcoder and its dependencies']
        .every((s) => stages.includes(s)), stages.slice(0, 600));
    check('the install shows pip\'s stages', /: (reading|collecting|downloading|installing) /.test(stages), '');
    if (!progressShot) {
        await screenshot(page, 'runtime-progress', await toastsBox(page));
    }
    check('the server starts from the new runtime and builds', building !== null && isBuilding(building), building || statusHistory.join(' | '));
    if (building === null || !isBuilding(building)) {
        return;
    }
    await screenshot(page, 'building', statusBarBox());

    // 3. Ready.
    const buildStarted = Date.now();
    const ready = await waitFor(page, isTerminal, BUILD_TIMEOUT, 'ready');
    timings.buildS = Math.round((Date.now() - buildStarted) / 1000);
    check('status bar goes to ready', ready !== null && isReady(ready), ready || statusHistory.join(' | '));
    await screenshot(page, 'ready', statusBarBox());

    // 4. Ghost text, accepted with Tab.
    await ghostTextAcceptedWithTab(page, editorBox);

    // 5. Reinstall runtime: the server stops, a new install starts (cancelled here: it was timed above).
    const before = progressHistory.length;
    await runCommand(page, 'Subcoder: Reinstall runtime');
    const reinstalling = toast(page, 'setting up the Python runtime');
    const started = await reinstalling.waitFor({ timeout: 30000 }).then(() => true, () => false);
    check('Reinstall runtime starts a new install', started);
    await screenshot(page, 'reinstalling', await toastsBox(page));
    if (started) {
        await reinstalling.hover();
        await reinstalling.locator('.monaco-button', { hasText: 'Cancel' }).click();
        const stopped = await waitFor(page, (t) => /not installed/.test(t), 60000, 'not installed after the cancel');
        check('cancelling it leaves "not installed"', stopped !== null, statusHistory.join(' | '));
        await screenshot(page, 'reinstall-cancelled', statusBarBox());
    }
    log(`progress messages after the reinstall: ${progressHistory.slice(before).join(' | ')}`);
}

runAndExit(steps, () => ({ timings, progressHistory }));
