"""How many tokens after the cursor a FIM prompt should carry: next-line quality and typing cost of
the frontier's configurations with a smaller suffix budget, paired with the same configurations at
the default budget (an eighth of the prompt budget: 63 tokens of 512).

    subcoder eval frontier --configs dense,... --layouts psm --cells nextline --suffix-tokens 32 \\
        --work-dir docs/measurements/frontier-suffix32 --report /tmp/s32.md      # quality, resumable
    subcoder eval frontier --configs dense,... --cells cost --interleave-cost 3 --suffix-tokens 32 \\
        --work-dir docs/measurements/frontier-suffix32                            # cost, this machine
    python benchmarks/suffix_budget.py --configs dense,... --budgets 32 [--write docs/PERFORMANCE.md]

Each row pairs one configuration's next-line results at a budget with its own results at the default
budget, task by task (the same seeded draw): the difference in exact match (McNemar's exact test on
the discordant tasks) and in edit similarity, each with a 95% interval bootstrapped over files, and
the smallest difference those tasks could have shown (MDE). Where a budget's cost cells were measured
on this machine, the typing-replay p50 is set beside the default's (each from its own run: compare
ratios to the dense anchor of each run, not raw milliseconds across runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from subcoder.pruner.evaluation import frontier  # noqa: E402

DEFAULT_DIR = Path("docs/measurements/frontier")
SECTION = "## Suffix budget"


def _store(budget: int | None) -> Path:
    return DEFAULT_DIR if budget is None else Path(f"docs/measurements/frontier-suffix{budget}")


def _pct(iv: dict) -> str:
    return f"{iv['estimate'] * 100:+.1f} pt [{iv['low'] * 100:+.1f}, {iv['high'] * 100:+.1f}]"


def _sim(iv: dict) -> str:
    return f"{iv['estimate']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"


def _typing(cells: dict) -> str:
    cell = cells.get(frontier.cost_cell())
    if not cell:
        return "–"
    p50 = (cell.get("replay") or {}).get("p50_ms")
    anchor = (cell.get("anchor") or {}).get("typing_p50_ms")
    return f"{p50:.0f} ms" + (f" ({p50 / anchor:.2f}x dense)" if p50 and anchor else "")


def rows(configs: list[str], budgets: list[int], language: str, layout: str, tasks: int) -> list[str]:
    out = []
    cell = f"nextline:{layout}"

    def plan(budget):
        return frontier.FrontierPlan(configurations=tuple(configs), languages=(language,), layouts=(layout,),
                                     tasks=tasks, suffix_tokens=budget)

    default = plan(None)
    base = frontier.load_cells(default, _store(None)).get(language, {})
    for budget in budgets:
        small = frontier.load_cells(plan(budget), _store(budget)).get(language, {})
        for name in configs:
            name = frontier.Configuration.parse(default.base, name).name
            a, b = (small.get(name) or {}), (base.get(name) or {})
            pair = frontier.pair_nextline((a.get(cell) or {}).get("results") or [],
                                           (b.get(cell) or {}).get("results"), seed=0)
            if pair is None:
                out.append(f"| {name} | {budget} | – | – | – | – | – | {_typing(a)} / {_typing(b)} |")
                continue
            res, ref = a[cell]["results"][:pair["n"]], b[cell]["results"][:pair["n"]]
            exact = lambda rs: f"{100 * sum(r['exact'] for r in rs) / len(rs):.1f}%"  # noqa: E731
            out.append(f"| {name} | {budget} | {pair['n']} | {exact(res)} / {exact(ref)} | {_pct(pair['exact_diff'])}, "
                       f"{pair['only_this']} / {pair['only_ref']}, p = {pair['mcnemar_p']:.2g} | "
                       f"{_sim(pair['similarity_diff'])} | {pair['exact_mde'] * 100:.1f} pt / "
                       f"{pair['similarity_mde']:.3f} | {_typing(a)} / {_typing(b)} |")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="dense", help="frontier configurations, comma-separated")
    ap.add_argument("--budgets", default="32", help="suffix budgets (tokens) measured, comma-separated")
    ap.add_argument("--language", default="python")
    ap.add_argument("--layout", default="psm")
    ap.add_argument("--tasks", type=int, default=300)
    ap.add_argument("--write", metavar="MD", help="replace the suffix-budget block of this markdown file")
    args = ap.parse_args(argv)
    configs = [c for c in args.configs.split(",") if c]
    budgets = [int(b) for b in args.budgets.split(",") if b]
    lines = [f"{args.language.capitalize()}, {args.layout.upper()}, 512-token prompt budget (the default suffix: "
             "63 tokens); the same seeded next-line tasks at each budget. Cost: typing-replay p50 on this machine "
             f"({frontier.cost_cell()}), smaller budget / default.", "",
             "| configuration | suffix tokens | paired tasks | exact, this / default | exact difference, only this / "
             "only default, McNemar p | similarity difference | MDE exact / similarity | typing p50 |",
             "|---|---:|---:|---|---|---|---|---|"]
    lines += rows(configs, budgets, args.language, args.layout, args.tasks)
    print("\n".join(lines))
    if args.write:
        from _report import write_block

        cmd = ("python benchmarks/suffix_budget.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
        write_block(Path(args.write), SECTION, "<!-- suffix-budget:begin (generated by benchmarks/suffix_budget.py) -->",
                    "<!-- suffix-budget:end -->", [f"Command: `{cmd}`", "", *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
