"""Settings of a study (``cxrssl demo``, ``cxrssl study``), with defaults that run the built-in
sample in minutes on a CPU."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cxrssl.errors import CxrsslError

Config = TypeVar("Config")  # a dataclass of settings


@dataclass
class StudyConfig:
    """What ``cxrssl demo`` and ``cxrssl study`` run: rule-based masks, pre-training units,
    fine-tuning units (method x K x seed) and the report. A YAML/JSON file given with
    ``--config`` overrides any key; the defaults are the demo's, sized for the built-in sample
    on a 2-core CPU.

    Attributes:
        labelled: Folder of the labelled set (``images/``, ``masks/``, ``labels.csv``, or any
            layout ``cxrssl data`` reads); empty: ``--data``, else the built-in sample.
            Relative paths here, in ``pool`` and in ``tests`` are relative to ``--data``.
        pool: Folders of unlabelled radiographs for pre-training; empty: the labelled set's
            images of every patient outside the test split (their masks are not read).
        tests: Other test sets, name -> folder with images and masks (e.g. ``jsrt``).
        methods: Pre-training methods (``cxrssl.ssl`` names; ``medsass-whole`` fine-tunes the
            whole MedSASS U-Net); ``scratch`` is always run.
        pretrain: ``PretrainConfig`` keys of every pre-training unit (size from ``size``).
        pretrain_seed: Seed of the pre-training units.
        pool_limit: Use at most this many pool images (a seeded draw); null: all.
        mask_workers: Processes computing the pool's rule-based maps.
        size: Side of the letterboxed network input (pre-training and fine-tuning).
        k_values: Labelled training images per unit; ``null`` means all of the training side.
        seeds: One fine-tuning unit per (method, K, seed); a seed draws its K images.
        steps: Optimiser steps per fine-tuning unit, whatever K.
        batch_size: Images per step.
        lr: Peak learning rate.
        model: ``cxrssl.nets`` name; ``model_kwargs`` its arguments.
        loss: ``cxrssl.losses`` name.
        val: Share of patients for validation (epoch and threshold).
        test: Share of patients held out for the reported figures.
        split_seed: Seed of the patient-level split.
        rules: Rule-based lung methods compared against the expert masks.
        gallery: Overlays per group (best, median, worst).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        progress: One progress bar over the units (else a log line per unit).
    """

    labelled: str = ""
    pool: list[str] = field(default_factory=list)
    tests: dict[str, str] = field(default_factory=dict)
    methods: list[str] = field(default_factory=lambda: ["simclr", "lung-crop", "medsass"])
    pretrain: dict[str, Any] = field(
        default_factory=lambda: {"epochs": 12, "batch_size": 16, "lr": 0.001, "holdout": 0.15}
    )
    pretrain_seed: int = 0
    pool_limit: int | None = None
    mask_workers: int = 1
    size: int = 64
    k_values: list[int | None] = field(default_factory=lambda: [1, 3, 10, None])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 50
    batch_size: int = 8
    lr: float = 3e-3
    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss: str = "bce_dice"
    val: float = 0.15
    test: float = 0.3
    split_seed: int = 0
    rules: list[str] = field(default_factory=lambda: ["seed", "default"])
    gallery: int = 2
    device: str = "auto"
    progress: bool = True

    def training_settings(self) -> dict[str, Any]:
        """The fine-tuning settings a unit's result depends on (its cache fingerprint): adding
        a method, a K or a seed recomputes no finished unit (a unit's checkpoint and data
        files are in its stamp)."""
        keep = {
            "size", "steps", "batch_size", "lr", "model", "model_kwargs", "loss", "val",
            "test", "split_seed",
        }  # fmt: skip
        return {k: v for k, v in dataclasses.asdict(self).items() if k in keep}


def load_settings(path: Path | None, kind: type[Config]) -> Config:
    """Defaults of ``kind`` (a dataclass of settings: ``StudyConfig``, a subclass, or a
    study's own), overridden by the keys of a YAML or JSON file.

    Raises:
        CxrsslError: unreadable file, or a key that is not a setting (the message lists them).
    """
    if path is None:
        return kind()
    try:
        text = Path(path).read_text()
        data = json.loads(text) if Path(path).suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise CxrsslError(f"{path}: cannot read the study config ({err})") from None
    if not isinstance(data, dict):
        raise CxrsslError(f"{path}: the study config must be a mapping of settings")
    known = {f.name for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise CxrsslError(f"{path}: unknown setting(s) {unknown}; known: {sorted(known)}")
    return kind(**data)


def load_config(path: Path | None) -> StudyConfig:
    """:func:`load_settings` of the demo's :class:`StudyConfig`."""
    return load_settings(path, StudyConfig)
