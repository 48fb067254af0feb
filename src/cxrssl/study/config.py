"""Settings of the demo study, with defaults that run the built-in sample in minutes on a CPU."""

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
    """What ``cxrssl demo`` runs. A YAML/JSON file given with ``--config`` overrides any key.

    Attributes:
        size: Side of the letterboxed network input.
        k_values: Labelled training images per unit; ``null`` means all of the training side.
        seeds: One unit per (K, seed).
        steps: Optimiser steps per unit, whatever K (small K gets more epochs).
        batch_size: Images per step.
        lr: Peak learning rate.
        model: ``cxrssl.nets`` name; ``model_kwargs`` its arguments.
        loss: ``cxrssl.losses`` name.
        val: Share of patients for validation (early-stopping checkpoint, threshold).
        test: Share of patients held out for the reported figures.
        split_seed: Seed of the patient-level split.
        rules: Rule-based lung methods compared against the expert masks.
        gallery: Overlays per group (best, median, worst).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    size: int = 128
    k_values: list[int | None] = field(default_factory=lambda: [5, 10, 20, None])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 160
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

    def training_settings(self) -> dict[str, Any]:
        """The settings a trained unit's result depends on (its cache fingerprint)."""
        skip = {"k_values", "seeds", "rules", "gallery", "device"}
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


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
