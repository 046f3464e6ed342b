// Builds the subcoder wheel from this repository into dist/, where the .vsix picks it up and the
// extension installs it into its own runtime (src/common/runtime.ts). Runs at packaging time
// (vscode:prepublish). The interpreter: $SUBCODER_PYTHON, else the repository's .venv, else python3.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ext = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const repo = path.dirname(ext);
const dist = path.join(ext, 'dist');
const venv = path.join(repo, '.venv', process.platform === 'win32' ? 'Scripts/python.exe' : 'bin/python');
const python = process.env.SUBCODER_PYTHON || (existsSync(venv) ? venv : 'python3');

// Exactly one wheel ships: the extension refuses to guess between two.
for (const name of existsSync(dist) ? readdirSync(dist) : []) {
    if (name.endsWith('.whl')) {
        rmSync(path.join(dist, name));
    }
}
// Built from a copy of the files git knows (tracked, or new and not ignored): setuptools' build/
// folder keeps files deleted from the source, and they would ship.
const listed = spawnSync('git', ['-C', repo, 'ls-files', '-z', '-co', '--exclude-standard'], { encoding: 'utf8', maxBuffer: 64 << 20 });
let source = repo;
if (listed.status === 0) {
    source = mkdtempSync(path.join(os.tmpdir(), 'subcoder-wheel-'));
    for (const file of listed.stdout.split('\0').filter(Boolean)) {
        if (!file.startsWith('extension/') && existsSync(path.join(repo, file))) {
            cpSync(path.join(repo, file), path.join(source, file));
        }
    }
}
// --no-deps: only subcoder itself; torch and the rest come from the index at install time.
const result = spawnSync(python, ['-m', 'pip', 'wheel', '--no-deps', '--disable-pip-version-check', '-q', '-w', dist, source], { stdio: 'inherit' });
if (source !== repo) {
    rmSync(source, { recursive: true, force: true });
}
if (result.status !== 0) {
    console.error(`bundle-wheel: ${python} -m pip wheel failed (${result.error?.message ?? `exit status ${result.status}`})`);
    process.exit(1);
}
const wheels = readdirSync(dist).filter((n) => n.endsWith('.whl'));
if (wheels.length !== 1 || !wheels[0].startsWith('subcoder-')) {
    console.error(`bundle-wheel: expected one subcoder wheel in ${dist}, found ${wheels.join(', ') || 'none'}`);
    process.exit(1);
}
console.log(`bundle-wheel: ${path.join('dist', wheels[0])}`);
