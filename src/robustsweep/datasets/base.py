"""What a dataset declares: how to read it, and what the rest of robustsweep needs to know about it.

A dataset is one :class:`Dataset` value in one module of this package (or a user's plugin,
entry-point group ``robustsweep.datasets``, whose attribute is a ``Dataset``). The trial config
takes its study defaults from it, the models their input normalization and number of classes, the
collapse rule its chance accuracy, and the data loader its ``read`` function. Nothing here imports
torch; ``read`` does, when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional


@dataclass(frozen=True)
class Dataset:
    name: str
    #: Balanced classes are assumed: a constant prediction then scores 1 / num_classes.
    num_classes: int
    #: (channels, height, width) of one image.
    image_shape: tuple[int, int, int]
    #: Per-channel mean and std of the training split (the models normalize inside, so attacks see [0, 1]).
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: ``read(root, train, download, verify_checksums)`` -> (uint8 images (N, C, H, W), int64 labels), CPU
    #: tensors. It raises FileNotFoundError (or torchvision's errors) when the files are not there.
    read: Callable[[Path, bool, bool, bool], tuple[Any, Any]]
    #: Where under data_root the files are, for the missing-data message.
    folder: str
    #: The model the study trains on it (``model: null`` in a trial means this one).
    default_model: str
    # ---- defaults for settings left as null (the study's, where the dataset is one of its two) ----
    epochs: int
    eps: tuple[float, ...]
    augment_crop: int = 0
    #: The step schedule: multiply the rate by ``step_gamma`` at these epochs, or every ``step_every`` epochs.
    step_milestones: Optional[tuple[int, ...]] = None
    step_every: Optional[int] = None
    step_gamma: float = 0.1
    #: Examples in the training split (before ``subset``), for sweep checks; None when not known up front.
    train_size: Optional[int] = None

    @property
    def chance_accuracy(self) -> float:
        return 1.0 / self.num_classes
