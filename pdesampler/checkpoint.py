"""The checkpoint of a training run: ``checkpoint.pt`` in its directory, to resume from.

The file holds ``{"model", "optimizer", "result", "extra"}``. The Adam phase
(:func:`pdesampler.optim.adam.run_adam`) writes it every ``checkpoint_every`` steps with
``extra = {"generator": ..., "phase": "adam"}``; when training is done it is written once more,
without the optimizer, with ``phase="done"`` and the rest of the results in ``extra``, so that
a finished run reloads instead of training again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CHECKPOINT", "Checkpoint"]

CHECKPOINT = "checkpoint.pt"


class Checkpoint:
    """``checkpoint.pt`` in ``directory`` (``None``: nowhere; nothing is read or written).

    Opening one loads the file if it exists (:attr:`state`) and sets ``generator``, the random
    stream of the training batches, to the state saved with it.
    """

    def __init__(self, directory: str | Path | None, generator: torch.Generator) -> None:
        self.path = Path(directory) / CHECKPOINT if directory is not None else None
        self.generator = generator
        exists = self.path is not None and self.path.exists()
        self.state: dict[str, Any] | None = (
            torch.load(self.path, weights_only=False) if exists else None
        )
        if self.state is not None:
            generator.set_state(self.state["extra"]["generator"])

    @property
    def phase(self) -> str | None:
        """The phase the file was written in (``"adam"``, ``"done"``), or ``None``: no file."""
        return None if self.state is None else self.state["extra"].get("phase")

    def extra(self, phase: str = "adam", **more: Any) -> dict[str, Any]:
        """The ``extra`` entry: the generator's state, the phase and ``more``."""
        return {"generator": self.generator.get_state(), "phase": phase, **more}

    def restore(self, model: nn.Module) -> tuple[dict[str, Any], dict[str, Any]]:
        """Load the saved weights into ``model``; returns the saved ``result`` and ``extra``."""
        if self.state is None:
            raise FileNotFoundError(f"no {CHECKPOINT} to restore from")
        model.load_state_dict(self.state["model"])
        return self.state["result"], self.state["extra"]

    def save(self, model: nn.Module, result: dict[str, Any], phase: str, **more: Any) -> None:
        """Write ``model``'s weights, ``result`` and :meth:`extra` (no optimizer)."""
        if self.path is not None:
            payload = {"model": model.state_dict(), "result": result}
            torch.save({**payload, "extra": self.extra(phase, **more)}, self.path)
