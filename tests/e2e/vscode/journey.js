// What the two VS Code journeys (drive.js: a server already installed; first_run.js: a new user's
// runtime install) share around their own steps, written once: a timestamped log, named checks,
// numbered screenshots in $ARTIFACTS, the status bar's history, headless Chromium on code-server's
// workbench, results.json and the exit status; and the one step both take, ghost text accepted with Tab.
//
// Environment: CS_URL (workbench URL with ?folder=), ARTIFACTS (folder), CHROME (browser binary),
// NODE_PATH (where playwright-core is).
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');
const { acceptWithTab, statusText, typeFunctionAndWaitForGhost } = require('./workbench');

// Often enough to catch a build of the tiny model, which shows for a second or two.
const POLL_MS = 100;

/**
 * A journey named `name` (the artefacts folder's prefix when $ARTIFACTS is not set) in a browser
 * window of `viewport`. Its functions close over the run's state, so a driver can take them apart.
 */
function journey(name, viewport) {
    const artifacts = process.env.ARTIFACTS || fs.mkdtempSync(path.join(os.tmpdir(), `${name}-`));
    const results = [];
    const statusHistory = [];
    const t0 = Date.now();
    let shot = 0;
    const log = (...a) => console.log(`[${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s]`, ...a);

    function check(checkName, ok, detail = '') {
        results.push({ name: checkName, ok, detail });
        log(`${ok ? 'PASS' : 'FAIL'} ${checkName}${detail ? `: ${detail}` : ''}`);
        return ok;
    }

    /** A full screenshot, and when `crop` is given (a box in page pixels) a cropped copy beside it (*-crop.png). */
    async function screenshot(page, shotName, crop) {
        shot += 1;
        const base = path.join(artifacts, `${String(shot).padStart(2, '0')}-${shotName}`);
        await page.screenshot({ path: `${base}.png` });
        if (crop) {
            const x = Math.max(0, Math.floor(crop.x));
            const y = Math.max(0, Math.floor(crop.y));
            const clip = { x, y, width: Math.min(viewport.width - x, Math.ceil(crop.width)), height: Math.min(viewport.height - y, Math.ceil(crop.height)) };
            await page.screenshot({ path: `${base}-crop.png`, clip });
        }
        log('screenshot', path.basename(base));
    }

    /**
     * Polls the status bar until `predicate(text)`, recording every distinct text seen; `onTick(text)`
     * runs on every poll. The text, or null when `timeout` (ms) passed first.
     */
    async function waitForStatus(page, predicate, timeout, what, onTick) {
        const deadline = Date.now() + timeout;
        while (Date.now() < deadline) {
            const text = await statusText(page).catch(() => null);
            if (text !== null && text !== statusHistory[statusHistory.length - 1]) {
                statusHistory.push(text);
                log(`status bar: "${text}"`);
            }
            if (onTick) {
                await onTick(text);
            }
            if (text !== null && predicate(text)) {
                return text;
            }
            await page.waitForTimeout(POLL_MS);
        }
        log(`timed out waiting for ${what}`);
        return null;
    }

    /** Types a new function in ops.py until ghost text shows, then accepts it with Tab; `crop(page)`
     * gives the screenshots' box (none: the whole window). */
    async function ghostTextAcceptedWithTab(page, crop = async () => undefined) {
        const ghost = await typeFunctionAndWaitForGhost(page, log);
        check('ghost text appears', ghost.trim().length > 0, JSON.stringify(ghost));
        await screenshot(page, 'ghost-text', await crop(page));
        if (ghost.trim()) {
            const tab = await acceptWithTab(page, ghost);
            check('Tab accepts the ghost text', tab.accepted, tab.detail);
            await screenshot(page, 'accepted', await crop(page));
        }
    }

    /**
     * Opens the workbench in a fresh headless Chromium profile and runs `steps(page)`; an exception is
     * a failed check. Then writes results.json (the checks, the status history and what `extra()`
     * adds) and exits: 0 only when there were checks and every one passed.
     */
    async function run(steps, extra = () => ({})) {
        fs.mkdirSync(artifacts, { recursive: true });
        const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'chromium-profile-'));
        const context = await chromium.launchPersistentContext(profile, {
            executablePath: process.env.CHROME || '/usr/bin/chromium',
            headless: true,
            viewport,
            // No sandbox (root in a container); the rest keeps Chromium off the (closed) network.
            args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
                '--disable-background-networking', '--disable-component-update', '--disable-sync'],
        });
        const page = context.pages()[0] || (await context.newPage());
        page.on('pageerror', (e) => log('page error:', String(e).slice(0, 200)));
        try {
            await page.goto(process.env.CS_URL || 'http://127.0.0.1:8080/');
            await page.locator('.monaco-workbench').waitFor({ timeout: 90000 });
            // The workbench takes its keybindings a moment after it appears.
            await page.waitForTimeout(3000);
            log('workbench loaded');
            await steps(page);
        } catch (err) {
            check('journey completed without exceptions', false, String((err && err.stack) || err).slice(0, 500));
            await screenshot(page, 'failure').catch(() => {});
        } finally {
            fs.writeFileSync(path.join(artifacts, 'results.json'), JSON.stringify({ results, statusHistory, ...extra() }, null, 2));
            await context.close();
        }
    }

    function runAndExit(steps, extra) {
        run(steps, extra).then(() => {
            const failed = results.filter((r) => !r.ok);
            log(`${results.length - failed.length}/${results.length} checks passed; artifacts in ${artifacts}`);
            process.exit(failed.length || results.length === 0 ? 1 : 0);
        }, (err) => {
            console.error(err);
            process.exit(2);
        });
    }

    return { log, check, screenshot, statusHistory, waitForStatus, ghostTextAcceptedWithTab, runAndExit };
}

module.exports = { journey };
