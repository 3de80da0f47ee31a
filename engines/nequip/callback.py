"""The Lightning callback that runs inside nequip-train, and what it says about divergence.

The templates name it by its dotted path, ``hillwalker.engines.nequip.progress_callback``
(re-exported by the package), which hydra calls with the progress file's path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hillwalker.engines.nequip.model_files import write_progress

#: a validation force RMSE above this (eV/Å) or not finite: the training has diverged
DIVERGED_FORCE_RMSE = 1e6


def diverged_epoch(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The first epoch whose validation force error is NaN, infinite or absurd, if any."""
    for entry in history:
        value = entry.get("val_forces_rmse")
        if value is None:
            continue
        if not (isinstance(value, int | float) and abs(value) <= DIVERGED_FORCE_RMSE):
            return dict(entry)
    return None


def epoch_entry(trainer: Any, seconds: float) -> dict[str, float]:
    """One epoch's line of the history: its validation metrics (val0_epoch/*) and learning rate."""
    entry: dict[str, float] = {
        "epoch": int(trainer.current_epoch) + 1,
        "seconds": round(seconds, 3),
    }
    for key, value in trainer.callback_metrics.items():
        if key.startswith("val0_epoch/"):
            entry["val_" + key.split("/", 1)[1]] = float(value)
    optimizers = trainer.optimizers
    if optimizers:
        entry["lr"] = float(optimizers[0].param_groups[0]["lr"])
    return entry


def progress_callback(path: str) -> Any:
    """A Lightning callback (built by hydra from the template) that writes ``path`` each epoch.

    Its history is also saved in the checkpoints, so a resumed run continues the same history.
    Defined inside a function so that importing this module does not import lightning.
    """
    from lightning.pytorch.callbacks import Callback

    class TrainingProgress(Callback):
        def __init__(self, path: str) -> None:
            self.path = Path(path)
            self.history: list[dict[str, float]] = []
            self.epoch_started = time.perf_counter()

        @property
        def state_key(self) -> str:
            return "hillwalker.TrainingProgress"

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epoch_started = time.perf_counter()

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            # after the epoch's validation metrics are in callback_metrics and before the
            # ModelCheckpoints (Lightning runs those last) save this epoch, with this history
            # (during fit, validation runs with stage "validate": ask for the fit itself)
            if trainer.sanity_checking or trainer.state.fn != "fit":
                return
            entry = epoch_entry(trainer, time.perf_counter() - self.epoch_started)
            self.history = [h for h in self.history if h["epoch"] < entry["epoch"]]
            self.history.append(entry)
            if diverged_epoch([entry]) is not None:
                # NaN (or runaway) weights stay so: stop now, train() reports it
                entry["diverged"] = True
                trainer.should_stop = True
            write_progress(
                self.path.parent,
                stage="training",
                max_epochs=int(trainer.max_epochs),
                history=self.history,
                name=self.path.name,
            )

        def state_dict(self) -> dict[str, Any]:
            return {"history": list(self.history)}

        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            self.history = list(state_dict.get("history", []))

    return TrainingProgress(path)
