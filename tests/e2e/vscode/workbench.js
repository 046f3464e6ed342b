// Workbench helpers shared by the VS Code end-to-end drivers (drive.js, first_run.js, through
// journey.js): status-bar predicates and the few workbench gestures both journeys use (command
// palette, quick open, cursor, ghost text and its acceptance), written once.
'use strict';

/** The subcoder status-bar item's text, or null while it is not shown. */
async function statusText(page) {
    return page.evaluate(() => {
        for (const el of document.querySelectorAll('.statusbar-item')) {
            const text = (el.textContent || '').trim();
            if (text.startsWith('Subcoder')) {
                return text;
            }
        }
        return null;
    });
}
const isBuilding = (t) => t.includes('building');
const isReady = (t) => / · .*sparse/.test(t);
const isTerminal = (t) => isReady(t) || /error|stopped|not installed/.test(t);

async function runCommand(page, title) {
    await page.keyboard.press('F1');
    const input = page.locator('.quick-input-widget input');
    await input.waitFor({ state: 'visible' });
    await input.fill(`>${title}`);
    await page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first().waitFor({ timeout: 10000 });
    await page.keyboard.press('Enter');
}
async function openFile(page, name) {
    await page.keyboard.press('Control+P');
    const input = page.locator('.quick-input-widget input');
    await input.waitFor({ state: 'visible' });
    await input.fill(name);
    await page.locator('.quick-input-list .monaco-list-row', { hasText: name }).first().waitFor({ timeout: 10000 });
    await page.keyboard.press('Enter');
    await page.locator(`.tab.active:has-text("${name}")`).waitFor({ timeout: 15000 });
    await page.locator('.editor-instance .monaco-editor .view-lines').first().waitFor();
}
async function editorLines(page) {
    return page.$$eval('.editor-instance .monaco-editor .view-lines .view-line', (els) =>
        els.map((e) => ({ top: parseFloat(e.style.top) || 0, text: (e.textContent || '').replace(/\u00a0/g, ' ') }))
            .sort((a, b) => a.top - b.top).map((l) => l.text));
}
async function cursor(page) {
    const text = await page.locator('.statusbar-item', { hasText: /Ln \d+, Col \d+/ }).first().textContent();
    const m = /Ln (\d+), Col (\d+)/.exec(text || '');
    return m ? { line: Number(m[1]), col: Number(m[2]) } : { line: -1, col: -1 };
}
/** The ghost text shown: the inline part on the cursor line, then any further lines below it. */
async function ghostText(page) {
    return page.evaluate(() => {
        const clean = (e) => (e.textContent || '').replace(/\u00a0/g, ' ');
        // Tokens of the inline part are separate spans on one line; extra lines sit in a view zone.
        const inline = [...document.querySelectorAll('.ghost-text-decoration, .ghost-text-decoration-preview')].map(clean).join('');
        const more = [...document.querySelectorAll('.ghost-text .view-line')].map(clean);
        return [inline, ...more].join('\n').replace(/^\n+|\n+$/g, '');
    });
}


/** Opens ops.py, types a new function up to `return `, and waits for ghost text (asking again with
 * Alt+\ up to three times, as a user can). Returns the ghost text, "" when none came. */
async function typeFunctionAndWaitForGhost(page, log) {
    await openFile(page, 'ops.py');
    await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
    await page.keyboard.press('Control+End');
    await page.keyboard.press('Enter');
    await page.keyboard.press('Enter');
    await page.keyboard.type('def power(a, b):', { delay: 30 });
    await page.keyboard.press('Enter');
    // The editor indents the body itself.
    await page.keyboard.type('"""Return a raised to the power b."""', { delay: 10 });
    await page.keyboard.press('Enter');
    await page.keyboard.type('return ', { delay: 30 });
    let ghost = '';
    for (let attempt = 0; attempt < 4 && !ghost.trim(); attempt++) {
        if (attempt > 0) {
            if (await page.$('.suggest-widget.visible')) {
                await page.keyboard.press('Escape');
            }
            await page.keyboard.press('Alt+Backslash');
        }
        try {
            await page.waitForFunction(() => [...document.querySelectorAll('.ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text')]
                .some((e) => (e.textContent || '').trim().length > 0), null, { timeout: 15000 });
            ghost = await ghostText(page);
        } catch {
            log(`no ghost text yet (attempt ${attempt + 1})`);
        }
    }
    return ghost;
}

/**
 * Presses Tab on the ghost text `ghost`. The view lines show ghost text as if typed, so acceptance is
 * seen in the cursor (status bar "Ln L, Col C") moving past the suggestion, and the lines holding it.
 */
async function acceptWithTab(page, ghost) {
    const before = await cursor(page);
    await page.keyboard.press('Tab');
    await page.waitForTimeout(500);
    const after = await cursor(page);
    const lines = ghost.split('\n');
    const expected = lines.length === 1
        ? { line: before.line, col: before.col + lines[0].length }
        : { line: before.line + lines.length - 1, col: lines[lines.length - 1].length + 1 };
    const text = (await editorLines(page)).join('\n');
    return {
        accepted: after.line === expected.line && after.col >= expected.col - 1 && text.includes(lines[0]),
        detail: `cursor ${before.line}:${before.col} -> ${after.line}:${after.col}, expected about ${expected.line}:${expected.col}`,
    };
}

module.exports = { statusText, typeFunctionAndWaitForGhost, acceptWithTab, isBuilding, isReady, isTerminal, runCommand, openFile, editorLines, cursor, ghostText };
