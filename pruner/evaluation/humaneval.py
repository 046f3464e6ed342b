"""HumanEval-X by execution (pass@1, greedy), its single-line variant, and HumanEval single-line infilling.

Programs are assembled as the data sets define them (`prompt + completion + "\\n" + test`), written into
a private sandbox directory, compiled where needed and executed with time and memory limits
(`sandbox.py`). A language whose toolchain is missing is *skipped with a reason*; tasks with known
defects in the data are excluded or skipped explicitly and listed in the results, never silently:

- JavaScript/112, JavaScript/155: fail with their own canonical solutions → excluded.
- CPP/22, CPP/137: include `boost/any.hpp` → skipped unless the header compiles.
- JavaScript/162: needs the npm module `js-md5` → skipped unless node can load it.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import random
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from subcoder.pruner.languages import HUMANEVAL_LANGUAGES, HUMANEVAL_TAGS

from .decode import BatchGenerator, Request, stop_after_line, stop_function_end
from .sandbox import Sandbox

DATA_DIR = Path(__file__).resolve().parent / "data"
LANGUAGES = HUMANEVAL_LANGUAGES
FILE_TAG = HUMANEVAL_TAGS  # language → the data set's file tag ("javascript" → "js")

EXCLUDED = {
    "JavaScript/112": "data defect: fails with its own canonical solution",
    "JavaScript/155": "data defect: fails with its own canonical solution",
}
NEEDS_BOOST = ("CPP/22", "CPP/137")
NEEDS_JS_MD5 = ("JavaScript/162",)

RUN_TIMEOUT = 10.0
COMPILE_TIMEOUT = 60.0
WORKERS = 2


def _jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@functools.lru_cache(maxsize=None)
def humanevalx_tasks(language: str) -> tuple[dict, ...]:
    return tuple(_jsonl_gz(DATA_DIR / "humaneval-x" / f"humaneval_{FILE_TAG[language]}.jsonl.gz"))


@functools.lru_cache(maxsize=None)
def singleline_tasks(language: str) -> tuple[dict, ...]:
    return tuple(_jsonl_gz(DATA_DIR / "humaneval-x-singleline" / f"{FILE_TAG[language]}.jsonl.gz"))


@functools.lru_cache(maxsize=None)
def infilling_tasks() -> tuple[dict, ...]:
    return tuple(_jsonl_gz(DATA_DIR / "humaneval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"))


# --------------------------------------------------------------------------- toolchains


@dataclass
class Toolchain:
    language: str
    available: bool
    reason: str = ""  # why not, when unavailable
    cpp_libs: tuple[str, ...] = ()
    boost: bool = False
    node_path: str = ""  # NODE_PATH under which js-md5 resolves, "" when it does not
    versions: dict = field(default_factory=dict)


def _probe(cmd: list[str], source: tuple[str, str] | None = None, timeout: float = 60.0, **kw):
    with Sandbox(prefix="subcoder-probe-") as box:
        if source:
            box.write(*source)
        return box.run(cmd, timeout=timeout, memory_mb=None, **kw)


def _version(cmd: list[str]) -> str:
    res = _probe(cmd, timeout=30)
    text = (res.stdout or res.stderr).strip().splitlines()
    return text[0] if text else ""


@functools.lru_cache(maxsize=None)
def _detect(language: str, path_env: str) -> Toolchain:
    def which(name):
        return shutil.which(name, path=path_env)

    if language == "python":
        return Toolchain("python", True, versions={"python": sys.version.split()[0]})
    if language == "cpp":
        if not which("g++"):
            return Toolchain("cpp", False, "g++ not found on PATH")
        libs: tuple[str, ...] = ()
        probe = _probe(["g++", "-std=c++11", "main.cpp", "-o", "main", "-lcrypto", "-lssl"],
                       ("main.cpp", "#include <openssl/md5.h>\nint main(){return 0;}\n"))
        if probe.ok:
            libs = ("-lcrypto", "-lssl")
        boost = _probe(["g++", "-std=c++11", "-fsyntax-only", "main.cpp"],
                       ("main.cpp", "#include <boost/any.hpp>\nint main(){return 0;}\n")).ok
        return Toolchain("cpp", True, cpp_libs=libs, boost=boost, versions={"g++": _version(["g++", "--version"])})
    if language == "java":
        missing = [n for n in ("javac", "java") if not which(n)]
        if missing:
            return Toolchain("java", False, f"{' and '.join(missing)} not found on PATH")
        return Toolchain("java", True, versions={"javac": _version(["javac", "-version"])})
    if language == "javascript":
        if not which("node"):
            return Toolchain("javascript", False, "node not found on PATH")
        node_path = os.environ.get("NODE_PATH", "")
        probe = _probe(["node", "-e", "require('js-md5')"], env={"NODE_PATH": node_path}, timeout=30)
        return Toolchain("javascript", True, node_path=node_path if probe.ok else "",
                         versions={"node": _version(["node", "--version"])})
    return Toolchain(language, False, f"no HumanEval-X runner for {language}")


def detect_toolchain(language: str) -> Toolchain:
    """What this machine can build and run for `language` (cached per PATH)."""
    return _detect(language, os.environ.get("PATH", ""))


def task_gate(task_id: str, tc: Toolchain) -> tuple[str, str] | None:
    """('excluded' | 'skipped', reason) for tasks that cannot be scored fairly here, else None."""
    if task_id in EXCLUDED:
        return "excluded", EXCLUDED[task_id]
    if task_id in NEEDS_BOOST and not tc.boost:
        return "skipped", "needs boost/any.hpp (Debian libboost-dev), not installed"
    if task_id in NEEDS_JS_MD5 and not tc.node_path:
        return "skipped", "needs the npm module js-md5, which node cannot load here"
    return None


# --------------------------------------------------------------------------- execution


def execute(language: str, program: str, tc: Toolchain, timeout: float = RUN_TIMEOUT) -> tuple[bool, str]:
    """Build and run one complete program; (passed, short reason)."""
    with Sandbox() as box:
        if language == "python":
            box.write("main.py", program)
            res = box.run([sys.executable, "-I", "main.py"], timeout=timeout, memory_mb=1024)
        elif language == "cpp":
            box.write("main.cpp", program)
            comp = box.run(["g++", "-std=c++11", "-O0", "main.cpp", "-o", "main", *tc.cpp_libs],
                           timeout=COMPILE_TIMEOUT, memory_mb=2048)
            if not comp.ok:
                return False, "compile error" if not comp.timed_out else "compile timeout"
            res = box.run(["./main"], timeout=timeout, memory_mb=1024)
        elif language == "java":
            box.write("Main.java", program)
            jvm = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto"]
            comp = box.run(["javac", "-J-Xmx512m", *(f"-J{o}" for o in jvm), "-encoding", "UTF-8", "Main.java"],
                           timeout=COMPILE_TIMEOUT, memory_mb=3072, memory_kind="data")
            if not comp.ok:
                return False, "compile error" if not comp.timed_out else "compile timeout"
            res = box.run(["java", "-Xmx512m", "-Xss16m", *jvm, "-cp", ".", "Main"], timeout=timeout,
                          memory_mb=3072, memory_kind="data")
        elif language == "javascript":
            box.write("main.js", program)
            res = box.run(["node", "--max-old-space-size=512", "main.js"], timeout=timeout, memory_mb=3072,
                          memory_kind="data", env={"NODE_PATH": tc.node_path} if tc.node_path else None)
            if res.ok and res.stderr.strip():
                return False, "assertion output on stderr"
        else:
            raise ValueError(language)
    if res.timed_out:
        return False, "timeout"
    if res.returncode != 0:
        return False, f"exit {res.returncode}"
    return True, "passed"


def execute_many(language: str, programs: list[str], tc: Toolchain, progress=None) -> list[tuple[bool, str]]:
    def one(p):
        out = execute(language, p, tc)
        if progress is not None:
            progress(1)
        return out

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(one, programs))


def program_for(language: str, task: dict, completion: str) -> str:
    return task["prompt"] + completion + "\n" + task["test"]


# --------------------------------------------------------------------------- sampling and gating


def select(tasks, language: str, tc: Toolchain, limit: int | None, seed: int, base_key: str = "task_id"):
    """Gate every task, then take a seeded sample of `limit` of the rest (in data order)."""
    keep, dropped = [], []
    for t in tasks:
        gate = task_gate(t[base_key], tc)
        if gate:
            dropped.append({"task_id": t["task_id"], "status": gate[0], "reason": gate[1]})
        else:
            keep.append(t)
    if limit is not None and limit < len(keep):
        idx = sorted(random.Random(f"{seed}:{language}").sample(range(len(keep)), limit))
        keep = [keep[i] for i in idx]
    return keep, dropped


def _gated_summary(dropped: list[dict]) -> dict:
    return {"excluded": [d for d in dropped if d["status"] == "excluded"],
            "skipped_tasks": [d for d in dropped if d["status"] == "skipped"]}


# --------------------------------------------------------------------------- metrics


def humaneval_x(gen: BatchGenerator, language: str, *, limit=None, seed=0, batch_size=8, max_new_tokens=384,
                bar=None) -> dict:
    tc = detect_toolchain(language)
    if not tc.available:
        return {"skipped": True, "reason": tc.reason}
    tasks, dropped = select(humanevalx_tasks(language), language, tc, limit, seed)
    stop = stop_function_end(language)
    reqs = [Request(t["prompt"], "", stop, max_new_tokens) for t in tasks]
    outs = gen.generate(reqs, batch_size=batch_size, progress=bar)
    results = execute_many(language, [program_for(language, t, o.text) for t, o in zip(tasks, outs)], tc)
    passed = sum(ok for ok, _ in results)
    return {"pass@1": passed / len(tasks) if tasks else None, "passed": passed, "n": len(tasks),
            **_gated_summary(dropped), "toolchain": tc.versions,
            "tasks": {t["task_id"]: why for t, (_, why) in zip(tasks, results)}}


def exact_match(prediction: str, target: str) -> bool:
    return prediction.strip() == target.strip()


def singleline(gen: BatchGenerator, language: str, *, limit=None, seed=0, batch_size=8, max_new_tokens=64,
               bar=None, run_tests: bool = True) -> dict:
    """Fill one line of a canonical solution; exact match, and pass rate by execution.

    When the prediction equals the target exactly the program is the canonical one, which passes
    (broken tasks are gated out), so only the others are executed.
    """
    tc = detect_toolchain(language)
    tasks, dropped = select(singleline_tasks(language), language, tc, limit, seed, base_key="base_task_id")
    reqs = [Request(t["prompt"], t["suffix"], stop_after_line, max_new_tokens) for t in tasks]
    outs = gen.generate(reqs, batch_size=batch_size, progress=bar)
    preds = [o.text for o in outs]
    em = [exact_match(p, t["target"]) for p, t in zip(preds, tasks)]
    result = {"exact_match": sum(em) / len(tasks) if tasks else None, "n": len(tasks), "fim": gen.fim,
              **_gated_summary(dropped)}
    if not run_tests:
        return result
    if not tc.available:
        result["execution"] = {"skipped": True, "reason": tc.reason}
        return result
    todo = [i for i, (p, t) in enumerate(zip(preds, tasks)) if p.rstrip() != t["target"].rstrip()]
    programs = [tasks[i]["prompt"] + preds[i].rstrip() + tasks[i]["suffix"] + "\n" + tasks[i]["test"] for i in todo]
    ran = dict(zip(todo, execute_many(language, programs, tc)))
    passed = sum(1 for i in range(len(tasks)) if (ran[i][0] if i in ran else True))
    result.update({"pass@1": passed / len(tasks) if tasks else None, "executed": len(todo)})
    return result


def infilling(gen: BatchGenerator, *, limit=None, seed=0, batch_size=8, max_new_tokens=64, bar=None) -> dict:
    """HumanEval single-line infilling (Python), for models with fill-in-the-middle tokens."""
    if not gen.fim:
        return {"skipped": True, "reason": "the model has no fill-in-the-middle tokens"}
    tc = detect_toolchain("python")
    tasks, _ = select(infilling_tasks(), "python-infilling", tc, limit, seed)
    reqs = [Request(t["prompt"], t["suffix"], stop_after_line, max_new_tokens) for t in tasks]
    outs = gen.generate(reqs, batch_size=batch_size, progress=bar)
    preds = [o.text.rstrip() for o in outs]
    em = [exact_match(p, t["canonical_solution"]) for p, t in zip(preds, tasks)]
    todo = [i for i, (p, t) in enumerate(zip(preds, tasks)) if p + "\n" != t["canonical_solution"]]
    programs = [tasks[i]["prompt"] + preds[i] + "\n" + tasks[i]["suffix"] + "\n" + tasks[i]["test"]
                + f"\ncheck({tasks[i]['entry_point']})\n" for i in todo]
    ran = dict(zip(todo, execute_many("python", programs, tc)))
    passed = sum(1 for i in range(len(tasks)) if (ran[i][0] if i in ran else True))
    return {"exact_match": sum(em) / len(tasks) if tasks else None, "pass@1": passed / len(tasks) if tasks else None,
            "n": len(tasks), "executed": len(todo)}
