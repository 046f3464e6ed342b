/**
 * The server's stderr, kept short. The server sends its log as `window/logMessage` at the level the
 * user chose and also writes it (with progress bars) to stderr; showing both doubles every line and
 * marks it all as an error. So stderr lines go to the channel at trace level, and the last few are
 * kept to show at error level when the process fails (an import error never reaches logMessage).
 */
export class LineTail {
    private readonly lines: string[] = [];

    constructor(private readonly capacity = 40) {}

    push(line: string): void {
        // Progress bars rewrite one terminal line with carriage returns: keep the last state.
        const text = line.split('\r').filter((part) => part.trim()).pop() ?? '';
        if (!text.trim()) {
            return;
        }
        this.lines.push(text);
        if (this.lines.length > this.capacity) {
            this.lines.splice(0, this.lines.length - this.capacity);
        }
    }

    /** The kept lines, oldest first; clears them. */
    drain(): string[] {
        return this.lines.splice(0, this.lines.length);
    }
}
