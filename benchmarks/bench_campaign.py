"""Per-generation wall time of a campaign split into MD, single points, training and the rest.

    .venv/bin/python benchmarks/bench_campaign.py [--campaign DIR] [--generations N]

Without --campaign, copies examples/mil53-xtb into a temporary directory and runs it (the main
job, ~10–30 min on 2 cores). With --campaign DIR and --read-only, only reads DIR's timings.
Prints one JSON object. Goals: engine overhead (time with no task running) ≤ 3 % of a
generation; cores busy during labeling ≥ 80 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--campaign", type=Path)
    parser.add_argument("--generations", type=int)
    parser.add_argument("--read-only", action="store_true")
    args = parser.parse_args()

    from hillwalker.runner import run_campaign
    from hillwalker.status import campaign_status

    if args.campaign is None:
        work = Path(tempfile.mkdtemp(prefix="bench-campaign-"))
        campaign = work / "mil53-xtb"
        shutil.copytree(ROOT / "examples" / "mil53-xtb", campaign)
        text = (campaign / "campaign.yaml").read_text()
        # the example names the template files relative to examples/mil53-xtb
        (campaign / "campaign.yaml").write_text(
            text.replace("../../templates", str(ROOT / "templates"))
        )
    else:
        campaign = args.campaign
    t0 = time.perf_counter()
    if not args.read_only:
        run_campaign(campaign, generations=args.generations)
    total = time.perf_counter() - t0

    generations = []
    for path in sorted(campaign.glob("generations/*/timings.json")):
        t = json.loads(path.read_text())
        wall = t["wall_seconds"]
        busy = t["busy_seconds"]
        generations.append(
            {
                "generation": t["generation"],
                "wall_s": round(wall, 2),
                "md_s": round(busy["md"], 2),
                "single_points_s": round(busy["dft"], 2),
                "training_s": round(busy["train"], 2),
                "other_s": round(t["idle_seconds"], 2),
                "overhead_fraction": round(t["overhead_fraction"], 4)
                if t["overhead_fraction"] is not None
                else None,
                "labeling_core_busy_fraction": (
                    round(t["labeling"]["core_busy_fraction"], 3)
                    if t["labeling"].get("core_busy_fraction")
                    else None
                ),
                "resumed": t.get("resumed", False),
            }
        )
    status = campaign_status(campaign)
    print(
        json.dumps(
            {
                "benchmark": "campaign",
                "campaign": str(campaign),
                "total_wall_s": round(total, 1),
                "generations": generations,
                "single_points": status["single_points"],
                "cv_range": status["cv_range"],
                "python": sys.version.split()[0],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
