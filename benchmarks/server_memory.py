"""Memory of one editor window: the real server's resident set once it serves the sub-model.

    python benchmarks/server_memory.py [--model qwen2.5-coder-0.5b] [--build] [--write docs/PERFORMANCE.md]

Starts `subcoder serve` (stdio) on a small Python workspace with default settings, waits until it serves
the Python sub-model, asks for one completion (so the engine's buffers and a KV cache exist, as in use),
and reads the server's /proc/PID/status: VmRSS (resident now), VmHWM (the peak), RssAnon and RssFile.
It compares them with the sub-model's resident bytes: the unique storages of the parameters and buffers of
the sub-model as the server loads it (same loader, same options), counted in this process afterwards.

Without --build the sub-model comes from the cache (the usual window: built once, loaded many times;
the base model is never loaded). With --build the sub-model cache is a fresh folder (the converted model
and the compiled kernel are shared), so the window builds it while serving the base model and swaps;
the figures after the swap show whether the base model's memory went back.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from _report import write_block  # noqa: E402
from server_latency import LspClient  # noqa: E402

SECTION = "## Memory per window"
BEGIN, END = "<!-- server_memory: begin -->", "<!-- server_memory: end -->"
SERVE = [sys.executable, "-P", "-c", "import sys; from subcoder.server.main import run; sys.exit(run(sys.argv[1:]))"]
DOC = "import os\n\n\ndef list_files(path):\n    return "


class Client(LspClient):
    """Says yes to the download question: the window is measured as a user who accepted it sees it."""

    def _answer(self, msg: dict) -> None:
        if msg["method"] == "window/showMessageRequest":
            self._send({"jsonrpc": "2.0", "id": msg["id"], "result": {"title": "Download"}})
        else:
            super()._answer(msg)


def proc_status(pid: int) -> dict[str, float]:
    """The memory lines of /proc/PID/status, in MiB."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            fields[key] = int(value.split()[0]) / 1024
    return fields


def resident_bytes(path: Path) -> int:
    """Bytes of the loaded sub-model's tensors (each storage once), loaded as the server loads it."""
    from subcoder.server.server import load_served
    from subcoder.server.settings import Settings

    completer = load_served(str(path), Settings(), True)
    model = completer.engine.model
    seen, total = set(), 0
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    for module in model.modules():  # packed sparse layers keep their tensors as plain attributes
        for value in vars(module).values():
            if hasattr(value, "untyped_storage") and value.untyped_storage().data_ptr() not in seen:
                seen.add(value.untyped_storage().data_ptr())
                total += value.untyped_storage().nbytes()
    return total


def workspace(root: Path) -> Path:
    for i in range(8):
        (root / "app").mkdir(parents=True, exist_ok=True)
        (root / "app" / f"mod{i}.py").write_text("".join(f"def f{j}(x):\n    return x * {j}\n\n\n" for j in range(40)))
    return root


def measure(model: str, build: bool, log_dir: Path) -> dict:
    from subcoder.pruner import paths
    from subcoder.server.builds import compute_key
    from subcoder.server.settings import Settings

    root = workspace(log_dir / "ws")
    env = dict(os.environ)
    cache = paths.cache_dir()
    if build:  # a fresh sub-model cache beside the shared converted models and compiled kernels
        fresh = log_dir / "cache"
        fresh.mkdir()
        for shared in ("models", "kernels"):
            if (cache / shared).is_dir():
                (fresh / shared).symlink_to(cache / shared)
        cache = fresh
        env["SUBCODER_CACHE_DIR"] = str(fresh)
    settings = {"model": model}
    client = Client([*SERVE, "--log-file", str(log_dir / "server.log")], env, settings, log_dir / "stderr.txt")
    started = time.perf_counter()
    try:
        client.request("initialize", {"processId": os.getpid(), "rootUri": root.as_uri(), "initializationOptions": settings,
                                      "capabilities": {"window": {"workDoneProgress": True, "showMessage": {}}}})
        client.notify("initialized", {})
        ready = client.wait_state(("ready",), timeout=3600)
        to_ready = time.perf_counter() - started
        uri = (root / "app" / "new.py").as_uri()
        client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                                "text": DOC}})
        client.request("textDocument/inlineCompletion", {"textDocument": {"uri": uri}, "position": {"line": 4, "character": 11},
                                                         "context": {"triggerKind": 2}})
        time.sleep(2)
        memory = proc_status(client.proc.pid)
        details, _ = client.request("workspace/executeCommand", {"command": "subcoder.status", "arguments": []})
    finally:
        client.close()
    key = compute_key(model, "python", Settings(model=model), str(root))
    entry = paths.submodels_dir(str(cache)) / key
    return {"memory": memory, "resident_models": details["resident"], "size_bytes": ready["sizeBytes"],
            "resident_bytes": resident_bytes(entry), "seconds_to_ready": to_ready,
            "built": details["counters"]["buildsFinished"], "base_loaded": details["counters"]["baseLoaded"]}


def report(result: dict, model: str, build: bool) -> list[str]:
    mib = result["resident_bytes"] / 2**20
    m = result["memory"]
    how = "built in this window (the base model served meanwhile, then released)" if build else "loaded from the cache"
    return [
        f"`python benchmarks/server_memory.py{' --build' if build else ''}` — {model}, default settings, Python "
        f"sub-model {how}; {platform.machine()} Linux, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} when measured.",
        "",
        "| figure | MiB | × sub-model resident bytes |",
        "|---|---:|---:|",
        f"| sub-model resident bytes (its tensors as loaded) | {mib:.0f} | 1.00 |",
        f"| sub-model on disk (status `sizeBytes`) | {result['size_bytes'] / 2**20:.0f} | {result['size_bytes'] / result['resident_bytes']:.2f} |",
        *(f"| server {k} after the swap and one completion | {m[k]:.0f} | {m[k] / mib:.2f} |" for k in ("VmRSS", "RssAnon", "RssFile")),
        f"| server VmHWM (peak) | {m['VmHWM']:.0f} | {m['VmHWM'] / mib:.2f} |",
        "",
        f"Models resident after the swap: {', '.join(result['resident_models']) or 'none'} (base model loaded "
        f"{result['base_loaded']} time(s), sub-models built: {result['built']}); {result['seconds_to_ready']:.0f} s "
        "from start to ready.",
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--build", action="store_true", help="build the sub-model in the window (fresh sub-model cache)")
    p.add_argument("--write", type=Path, help="put the table into this markdown file (docs/PERFORMANCE.md)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="subcoder-memory-") as tmp:
        result = measure(args.model, args.build, Path(tmp))
    lines = report(result, args.model, args.build)
    print("\n".join(lines))
    if args.write:
        suffix = "-build" if args.build else ""
        write_block(args.write, SECTION, BEGIN.replace(":", suffix + ":", 1), END.replace(":", suffix + ":", 1), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
