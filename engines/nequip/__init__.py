"""NequIP models for one generation: train (from scratch or warm start), package, compile, load.

- :mod:`.training`: :func:`train` runs ``nequip-train`` in a model directory (resumable);
  :mod:`.settings` holds :class:`TrainSettings`, :mod:`.data` the choice of frames, energy
  shifts and the validation split, :mod:`.template` the hydra template and overrides.
- :mod:`.deploy`: package, compile, load as an ASE calculator, evaluate on labeled frames.
- :mod:`.callback`: the Lightning callback that runs inside ``nequip-train`` (the templates
  name it ``hillwalker.engines.nequip.progress_callback``) and the divergence test.
- :mod:`.model_files`: the model directory's files and record; :mod:`.commands` and
  :mod:`.threads`: the nequip tools as subprocesses, each with its own explicit thread count.

torch, lightning and nequip are imported inside functions so that importing this package (the
CLI, the workflow) stays cheap.
"""

from hillwalker.engines.nequip.callback import diverged_epoch, progress_callback
from hillwalker.engines.nequip.deploy import (
    compile_model,
    evaluate,
    load_calculator,
    model_species,
    package_checkpoint,
    resolve_device,
)
from hillwalker.engines.nequip.model_files import (
    COMPILED_NAME,
    PACKAGE_NAME,
    PROGRESS_NAME,
    RECORD_NAME,
    ModelError,
    TrainedModel,
)
from hillwalker.engines.nequip.settings import TrainSettings
from hillwalker.engines.nequip.template import default_template
from hillwalker.engines.nequip.training import train

__all__ = [
    "COMPILED_NAME",
    "PACKAGE_NAME",
    "PROGRESS_NAME",
    "RECORD_NAME",
    "ModelError",
    "TrainSettings",
    "TrainedModel",
    "compile_model",
    "default_template",
    "diverged_epoch",
    "evaluate",
    "load_calculator",
    "model_species",
    "package_checkpoint",
    "progress_callback",
    "resolve_device",
    "train",
]
