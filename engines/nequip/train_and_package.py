"""nequip-train, then nequip-package of the checkpoint it wrote, in one process.

Each of nequip's command-line tools spends its first seconds importing torch, Lightning and
nequip (6-11 s measured on 2 cores); packaging itself takes 2-3 s for the models here. Run as
``python -m hillwalker.engines.nequip.train_and_package --package CKPT STAGED -- nequip-train
ARGS...`` (the tool's name in the command line, for ``ps``): it trains exactly as ``nequip-train
ARGS...`` would (the same entry point, the same arguments), and
when that succeeds packages CKPT into STAGED, then writes ``done.json`` beside STAGED (written
last: the package is complete and was made from that checkpoint as it is now). A packaging
failure is printed and leaves no ``done.json``: the caller then packages the checkpoint itself
(``deploy.package_checkpoint``), whose log shows the error. The exit status is nequip-train's.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

#: written beside the staged package once it is complete
DONE_NAME = "done.json"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 5 or args[0] != "--package" or args[3:5] != ["--", "nequip-train"]:
        print(
            "usage: python -m hillwalker.engines.nequip.train_and_package "
            "--package CKPT STAGED -- nequip-train ARGS...",
            file=sys.stderr,
        )
        return 2
    checkpoint, staged, train_args = Path(args[1]), Path(args[2]), args[5:]

    from nequip.scripts.train import main as train_main

    sys.argv = ["nequip-train", *train_args]
    try:
        train_main()
    except SystemExit as exc:  # hydra exits with the status of a failed run
        if exc.code not in (0, None):
            raise
    if not checkpoint.is_file():
        return 0  # the caller reports the missing checkpoint
    _package(checkpoint, staged)
    return 0


def _package(checkpoint: Path, staged: Path) -> None:
    from nequip.scripts.package import main as package_main

    started = time.perf_counter()
    staged.parent.mkdir(parents=True, exist_ok=True)
    try:
        package_main(["build", str(checkpoint), str(staged)])
    except (Exception, SystemExit):  # reported here; the caller packages again
        print("hillwalker: packaging after training failed; the caller retries it:")
        traceback.print_exc(file=sys.stdout)
        return
    done = {
        "checkpoint": str(checkpoint),
        "checkpoint_mtime_ns": checkpoint.stat().st_mtime_ns,
        "seconds": round(time.perf_counter() - started, 2),
    }
    partial = staged.parent / f".{DONE_NAME}.partial"
    partial.write_text(json.dumps(done))
    partial.replace(staged.parent / DONE_NAME)


if __name__ == "__main__":
    sys.exit(main())
