"""The distillation results of several runs as one markdown table (from ``distill_report.json``).

    python experiments/distill_table.py multirun/nmf_default/0__nmf__ppo__0 ...

Per run (after ``python -m lrrl.distill run_dir=RUN``): the test mean ``log(loss_T/loss_0)``
of the agent, GreedyLR's defaults, the open-loop fit and the chosen closed-loop (DAgger) fit,
the share of the agent's gain over the defaults each fit keeps, and which candidate the
training instances chose. A last row averages the runs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np


def row(run_dir: Path) -> dict[str, float | str]:
    report = json.loads((run_dir / "distill_report.json").read_text())
    check = report["check"]
    L = {name: s["log_loss_ratio"] for name, s in check["schedulers"].items()}
    agent = next(n for n in L if not n.startswith("greedylr"))
    dagger = report.get("dagger") or {}
    # Only where the agent beat GreedyLR's defaults is there a gain to keep.
    gain = L["greedylr_default"] - L[agent] > 0
    return {
        "run": run_dir.name,
        "agent": L[agent],
        "default": L["greedylr_default"],
        "open_loop": L.get("greedylr_open_loop", math.nan),
        "distilled": L["greedylr_distilled"],
        "kept_open": check.get("recovered_gain_open_loop", math.nan) if gain else math.nan,
        "kept": check["recovered_gain"] if gain else math.nan,
        "chosen": str(dagger.get("chosen", "open loop")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", type=Path)
    args = parser.parse_args()
    rows = [row(d) for d in args.run_dirs]
    keys = ("agent", "default", "open_loop", "distilled")
    print(
        "| run | agent | GreedyLR defaults | open-loop fit | chosen fit (DAgger) | "
        "gain kept: open loop | gain kept: chosen | chosen candidate |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def share(x: float) -> str:
        return "–" if math.isnan(x) else f"{x:.0%}"

    for r in rows:
        cells = " | ".join(f"{r[k]:.3f}" for k in keys)
        print(
            f"| {r['run']} | {cells} | {share(float(r['kept_open']))} | {share(float(r['kept']))}"
            f" | {r['chosen']} |"
        )
    mean = {k: float(np.mean([float(r[k]) for r in rows])) for k in keys}
    gap = mean["default"] - mean["agent"]

    def kept(name: str) -> str:
        return f"{(mean['default'] - mean[name]) / gap:.0%}" if gap > 0 else "–"

    cells = " | ".join(f"{mean[k]:.3f}" for k in keys)
    print(f"| **mean** | {cells} | {kept('open_loop')} | {kept('distilled')} | |")
    print(
        "\n(test mean log(loss_T/loss_0); gain kept = (L_default - L_fit) / (L_default - L_agent);"
        " negative: the fit ends worse than GreedyLR's defaults; –: the agent did not beat them)"
    )


if __name__ == "__main__":
    main()
