// A new user's first run, driven in code-server's workbench (headless Chromium, playwright-core):
// the extension asks to set up its Python runtime -> "Set up runtime" -> the install's progress
// notification -> status building -> ready -> ghost text accepted with Tab -> "Subcoder: Reinstall
// runtime" starts a new install, cancelled from its notification. A full screenshot per step in
// $ARTIFACTS, and a cropped one (*-crop.png) of the part the README shows.
// Exit status 0 only when every check passed; results.json lists them.
//
// Environment: CS_URL (workbench URL with ?folder=), ARTIFACTS, CHROME (browser binary),
// INSTALL_TIMEOUT_S (runtime install, default 420), BUILD_TIMEOUT_S (default 180), NODE_PATH.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

const URL = process.env.CS_URL || 'http://127.0.0.1:8080/';
const ARTIFACTS = process.env.ARTIFACTS || fs.mkdtempSync(path.join(os.tmpdir(), 'subcoder-first-run-'));
const INSTALL_TIMEOUT = 1000 * Number(process.env.INSTALL_TIMEOUT_S || 420);
const BUILD_TIMEOUT = 1000 * Number(process.env.BUILD_TIMEOUT_S || 180);
const VIEWPORT = { width: 1280, height: 800 };
const t0 = Date.now();
const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s]`, ...a);

const results = [];
const timings = {};
const statusHistory = [];
const progressHistory = [];
let shot = 0;

function check(name, ok, detail = '') {
    results.push({ name, ok, detail });
    log(`${ok ? 'PASS' : 'FAIL'} ${name}${detail ? `: ${detail}` : ''}`);
    return ok;
}

/** A full screenshot, and when `crop` is given (a box in page pixels) a cropped copy beside it. */
async function screenshot(page, name, crop) {
    shot += 1;
    const base = path.join(ARTIFACTS, `${String(shot).padStart(2, '0')}-${name}`);
    await page.screenshot({ path: `${base}.png` });
    if (crop) {
        const x = Math.max(0, Math.floor(crop.x));
        const y = Math.max(0, Math.floor(crop.y));
        const clip = { x, y, width: Math.min(VIEWPORT.width - x, Math.ceil(crop.width)), height: Math.min(VIEWPORT.height - y, Math.ceil(crop.height)) };
        await page.screenshot({ path: `${base}-crop.png`, clip });
    }
    log('screenshot', path.basename(base));
}

// --- what the workbench shows ----------------------------------------------------------------------
const toast = (page, text) => page.locator('.notifications-toasts .notification-toast', { hasText: text }).first();

/** The notifications in view, and the right part of the status bar below them. */
async function toastsBox(page) {
    const box = await page.locator('.notifications-toasts').boundingBox();
    const top = box ? box.y - 12 : VIEWPORT.height - 200;
    return { x: VIEWPORT.width - 620, y: top, width: 620, height: VIEWPORT.height - top };
}
const statusBarBox = () => ({ x: VIEWPORT.width - 640, y: VIEWPORT.height - 30, width: 640, height: 30 });

/** Polls until `predicate(statusText)`; records every distinct text and progress message seen. */
async function waitFor(page, predicate, timeout, what, onTick) {
    const deadline = Date.now() + timeout;
    while (Date.now() < deadline) {
        const text = await statusText(page).catch(() => null);
        if (text !== null && text !== statusHistory[statusHistory.length - 1]) {
            statusHistory.push(text);
            log(`status bar: "${text}"`);
        }
        const progress = await page.evaluate(() => [...document.querySelectorAll('.notifications-toasts .notification-list-item-message')]
            .map((e) => (e.textContent || '').replace(/\s+/g, ' ').trim()).find((t) => t.includes('Python runtime')) || null).catch(() => null);
        if (progress && progress !== progressHistory[progressHistory.length - 1]) {
            progressHistory.push(progress);
            log(`notification: "${progress}"`);
        }
        if (onTick) {
            await onTick(text, progress);
        }
        if (text !== null && predicate(text)) {
            return text;
        }
        await page.waitForTimeout(250);
    }
    log(`timed out waiting for ${what}`);
    return null;
}
const { isBuilding, isReady, isTerminal, runCommand, statusText, typeFunctionAndWaitForGhost, cursor } = require('./workbench');

/** The editor lines around the cursor (the ghost text and a few lines of context). */
async function editorBox(page) {
    const editor = await page.locator('.editor-instance .monaco-editor').first().boundingBox();
    const cur = await page.locator('.editor-instance .monaco-editor .cursor').first().boundingBox().catch(() => null);
    const y = cur ? cur.y - 150 : editor.y;
    return { x: editor.x, y, width: Math.min(760, editor.width), height: 230 };
}

async function journey(page) {
    await page.goto(URL);
    await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
    await page.waitForTimeout(3000);
    log('workbench loaded');

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
    const building = await waitFor(page, (t) => isBuilding(t) || isTerminal(t), INSTALL_TIMEOUT, 'the runtime install and the build to start',
        async (_text, progress) => {
            if (!progressShot && progress && /Installing subcoder and its dependencies: installing/.test(progress)) {
                progressShot = true;
                await screenshot(page, 'runtime-progress', await toastsBox(page));
            }
        });
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
    const ghost = await typeFunctionAndWaitForGhost(page, log);
    check('ghost text appears', ghost.trim().length > 0, JSON.stringify(ghost));
    await screenshot(page, 'ghost-text', await editorBox(page));
    if (ghost.trim()) {
        const before = await cursor(page);
        await page.keyboard.press('Tab');
        await page.waitForTimeout(500);
        const after = await cursor(page);
        const lines = ghost.split('\n');
        const expected = lines.length === 1
            ? { line: before.line, col: before.col + lines[0].length }
            : { line: before.line + lines.length - 1, col: lines[lines.length - 1].length + 1 };
        check('Tab accepts the ghost text', after.line === expected.line && after.col >= expected.col - 1,
            `cursor ${before.line}:${before.col} -> ${after.line}:${after.col}, expected about ${expected.line}:${expected.col}`);
        await screenshot(page, 'accepted', await editorBox(page));
    }

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

async function main() {
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'chromium-profile-'));
    const context = await chromium.launchPersistentContext(profile, {
        executablePath: process.env.CHROME || '/usr/bin/chromium',
        headless: true,
        viewport: VIEWPORT,
        // No sandbox (root in a container); the rest keeps Chromium off the (closed) network.
        args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
            '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (e) => log('page error:', String(e).slice(0, 200)));
    try {
        await journey(page);
    } catch (err) {
        check('journey completed without exceptions', false, String((err && err.stack) || err).slice(0, 500));
        await screenshot(page, 'failure').catch(() => {});
    } finally {
        fs.writeFileSync(path.join(ARTIFACTS, 'results.json'), JSON.stringify({ results, timings, statusHistory, progressHistory }, null, 2));
        await context.close();
    }
}

main().then(() => {
    const failed = results.filter((r) => !r.ok);
    log(`${results.length - failed.length}/${results.length} checks passed; artifacts in ${ARTIFACTS}`);
    process.exit(failed.length || results.length === 0 ? 1 : 0);
}, (err) => {
    console.error(err);
    process.exit(2);
});
