"""The build child process: `python -m subcoder.server.build_worker`, one sub-model per run.

Reads one JSON line from stdin (the `BuildRequest`), then writes JSON lines to stdout:
`{"event": "waiting"}` while another process holds the entry's lock, `{"event": "progress", stage,
done, total, message}` per layer, and finally `{"event": "done", path, cached}` or `{"event": "error",
message, kind}`. Logging goes to stderr, which the server copies into its own log.

A line `cancel` on stdin asks for a clean stop between layers; stdin closing (the server died) too.
Exit status: 0 done, 1 error, 2 cancelled, 130 stopped by SIGTERM or SIGINT.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path


def _emit(**event) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def _watch_stdin(flag: threading.Event) -> None:
    for line in sys.stdin:
        if line.strip() == "cancel":
            break
    flag.set()


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("subcoder.server.build_worker")

    from subcoder.pruner.errors import Cancelled, SubcoderError
    from subcoder.pruner.paths import terminate_as_interrupt, write_failure

    terminate_as_interrupt()  # `kill` stops the build like a cancel: the partial entry is removed on the way out
    request = json.loads(sys.stdin.readline())
    cancelled = threading.Event()
    threading.Thread(target=_watch_stdin, args=(cancelled,), daemon=True).start()
    try:
        return _build(request, cancelled, log)
    except Cancelled:
        _emit(event="error", kind="Cancelled", message="build cancelled")
        return 2
    except KeyboardInterrupt:
        _emit(event="error", kind="Terminated", message="the build was stopped by a signal")
        return 130
    except SubcoderError as exc:
        _emit(event="error", kind=type(exc).__name__, message=str(exc))
        return 1
    except MemoryError:
        _emit(event="error", kind="MemoryError", message="out of memory while building the sub-model")
        return 1
    except OSError as exc:  # the cache folder itself (its lock, a leftover) is read-only, full or gone
        error = write_failure(exc, Path(exc.filename or request["cache_root"])) or exc
        _emit(event="error", kind="CacheError", message=f"the sub-model cache is not usable: {error}")
        return 1
    except Exception as exc:  # the server shows this line; the traceback goes to its log
        log.exception("build failed")
        _emit(event="error", kind=type(exc).__name__, message=f"build failed: {exc}")
        return 1


def _build(request: dict, cancelled: threading.Event, log) -> int:
    from subcoder.pruner.calibration import CalibrationSpec
    from subcoder.pruner.config import Pattern, PruneConfig
    from subcoder.pruner.extract import extract
    from subcoder.pruner.paths import clean_stale_temps

    from .cache import CacheManager

    cache = CacheManager(request["cache_root"], size_limit_mb=1 << 22)
    key = request["key"]
    for leftover in clean_stale_temps(cache.root):  # other entries' leftovers, whose writers are gone
        log.info("removed %s, left by an interrupted write", leftover.name)
    lock = cache.lock(key)  # inside main's error handling: a read-only cache fails here, with a message
    if not _try_lock(lock):
        _emit(event="waiting", message="another subcoder window is building this sub-model")
        while not _try_lock(lock, 0.5):
            if cancelled.is_set():
                return 2
    try:
        if not request.get("force") and (path := cache.lookup(key)) is not None:
            _emit(event="done", path=str(path), cached=True)
            return 0
        cache.clean_partial(key)
        calib = request["calibration"]
        spec = CalibrationSpec(source=calib["source"], workspace=calib.get("workspace"),
                               mix_ratio=calib.get("mix_ratio", 0.5), n_samples=calib["n_samples"],
                               seq_len=calib["seq_len"])
        config = PruneConfig(sparsity=request["sparsity"], pattern=Pattern.parse(request["pattern"]),
                             method=request["method"], values=request.get("values", "bf16"))
        started = time.perf_counter()

        def progress(p):
            _emit(event="progress", stage=p.stage, done=p.done, total=p.total, message=p.message)

        result = extract(request["model"], request["language"], config, spec, cache.entry_path(key),
                         dtype=request.get("dtype", "bfloat16"), device=request.get("device", "cpu"),
                         cache_dir=request.get("models_cache_dir") or None, progress=progress,
                         force=bool(request.get("force")),
                         cancel=cancelled.is_set)
        if result.manifest.get("cache_key") not in (None, key):
            log.warning("the build computed key %s, the server asked for %s", result.manifest.get("cache_key"), key)
        _emit(event="done", path=str(result.path), cached=False, seconds=round(time.perf_counter() - started, 2))
        return 0
    finally:
        lock.release()


def _try_lock(lock, timeout: float = 0.0) -> bool:
    import filelock

    try:
        lock.acquire(timeout=timeout)
        return True
    except filelock.Timeout:
        return False


if __name__ == "__main__":
    sys.exit(main())
