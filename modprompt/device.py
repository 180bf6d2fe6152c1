"""Where the model runs: one device string for every command (``--device``), resolved once.

The rule everywhere: a model is moved to its device and its :class:`~modprompt.data.encoding.MRCEncoder`
is given the same device, so every batch it collates is built there. Random draws that a seed must fix
on every device (example order, routing noise, black-box projections) come from CPU generators and are
moved after.
"""

from __future__ import annotations

import os

import torch

#: the device name that picks for itself (``--device``'s default)
AUTO = "auto"


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """``"auto"`` (or None): CUDA when torch sees a GPU, else the CPU; otherwise the torch device named.

    Under ``torchrun`` a bare ``cuda`` (or ``auto`` picking it) means this process's GPU, ``cuda:LOCAL_RANK``.
    A device this torch cannot use is an error that says why, rather than a failure at the first batch.
    """
    if name is None or str(name) == AUTO:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {str(name)!r}: {err}") from None
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(name)!r} asked for, but this torch ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(name)!r} asked for, but this torch has no usable MPS backend")
    return device
