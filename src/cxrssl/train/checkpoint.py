"""Checkpoints: dicts of plain types and tensors, written atomically, read with
``weights_only=True``.

Keys of a checkpoint written by :class:`cxrssl.train.Trainer` (``FORMAT_VERSION`` 1):
``format_version``, ``model`` ({"name", "kwargs"}), ``state_dict``, ``optimizer``,
``scheduler``, ``scaler``, ``epoch`` (epochs completed), ``best`` (best monitored value),
``bad_epochs``, ``history`` (one dict per epoch), ``config`` (the training config), and
``extra`` (task data such as the tuned ``threshold`` and the letterbox ``size``). A "best"
checkpoint leaves out the optimizer, scheduler and scaler.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrssl.errors import CxrsslError
from cxrssl.files import atomic_open

FORMAT_VERSION = 1
ENCODER_PREFIX = "encoder."

log = logging.getLogger(__name__)


class CheckpointError(CxrsslError):
    """A checkpoint that cannot be read or is not a cxrssl checkpoint."""


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint that could not be written (a full disk, a read-only folder); the file
    it would have replaced is unchanged. Also an ``OSError``, as the failure it reports."""


def _os_error(err: BaseException) -> OSError | None:
    """The ``OSError`` behind ``err``: itself, or the cause or context that ``torch.save``
    wraps in a ``RuntimeError`` when a write of its zip writer fails."""
    seen: BaseException | None = err
    for _ in range(4):
        if seen is None or isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_error(path: Path, err: OSError) -> CheckpointWriteError:
    if err.errno == errno.ENOSPC:
        what = "no space left on device"
    else:
        what = err.strerror or str(err) or type(err).__name__
    return CheckpointWriteError(
        f"{path}: cannot write checkpoint: {what}; the previous {path.name}, if any, is "
        "unchanged and no partial file is left (free space, then --resume continues from it)"
    )


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder,
    flushed, then renamed over ``path`` (a killed run never leaves a half-written file).

    Raises:
        CheckpointWriteError: The write failed (a full disk, say); ``path`` keeps its
            previous content and the temporary file is removed.
    """
    path = Path(path)
    try:
        with atomic_open(path, "wb", fsync=True) as f:
            torch.save({"format_version": FORMAT_VERSION, **payload}, f)
    except (OSError, RuntimeError) as err:
        cause = _os_error(err)
        if cause is None:
            raise
        raise _write_error(path, cause) from err


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format version.

    Raises:
        CheckpointError: Missing or unreadable file, or an unknown format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file fails in many ways (IndexError, OSError...)
        first = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise CheckpointError(
            f"{path}: cannot read checkpoint, the file is damaged, truncated or not a "
            f"checkpoint ({first})"
        ) from err
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise CheckpointError(f"{path}: not a cxrssl checkpoint (no format_version)")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {ckpt['format_version']} is newer than this cxrssl "
            f"reads ({FORMAT_VERSION}); upgrade cxrssl"
        )
    return dict(ckpt)


def load_init(net: nn.Module, path: str | Path, encoder_only: bool = False) -> int:
    """Initialise ``net`` in place from a checkpoint (pre-training or supervised).

    The checkpoint holds the whole model (``state_dict``) or only an encoder
    (``encoder_state_dict``, keys relative to the encoder, as pre-training writes it).
    With ``encoder_only`` only keys under ``encoder.`` are taken; the rest of ``net`` keeps
    its fresh initialisation.

    Returns:
        Number of tensors loaded.

    Raises:
        CheckpointError: Unreadable file, no matching weights, missing weights (whole-model
            init) or a shape mismatch.
    """
    ckpt = load_checkpoint(path)
    if "encoder_state_dict" in ckpt:
        source = {ENCODER_PREFIX + k: v for k, v in ckpt["encoder_state_dict"].items()}
    elif "state_dict" in ckpt:
        source = dict(ckpt["state_dict"])
    else:
        raise CheckpointError(f"{path}: checkpoint has no 'state_dict' or 'encoder_state_dict'")
    target = net.state_dict()
    wanted = {k for k in target if not encoder_only or k.startswith(ENCODER_PREFIX)}
    found = {k: v for k, v in source.items() if k in wanted}
    if not found:
        hint = f" (expected keys starting with {ENCODER_PREFIX!r})" if encoder_only else ""
        raise CheckpointError(f"{path}: no weights match the model{hint}")
    for key, value in found.items():
        if value.shape != target[key].shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)}, the model expects "
                f"{tuple(target[key].shape)} (different in_channels or features?)"
            )
    missing = sorted(wanted - found.keys())
    if missing and not encoder_only:
        raise CheckpointError(
            f"{path}: {len(missing)} model weights missing (e.g. {missing[0]}); "
            "use encoder_only to load an encoder"
        )
    if missing and encoder_only:
        log.warning(
            "%s: %d encoder weights not in the checkpoint keep their initial values (e.g. %s)",
            path,
            len(missing),
            missing[0],
        )
    net.load_state_dict(found, strict=False)
    log.info("initialised %d tensors from %s%s", len(found), path, " (encoder)" * encoder_only)
    return len(found)
