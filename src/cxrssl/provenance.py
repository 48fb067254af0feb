"""What a cached result was computed from: the code that ran and the files it read.

Caches stamp their entries with these hashes, so a changed source file, parameter or input
file misses instead of serving a stale result.

- ``modules_of``: the cxrssl modules a computation runs (its roots plus every cxrssl module
  they import, found by reading the sources, not by importing them).
- ``source_hash``: SHA-1 of those modules' source text (once per process).
- ``constants``: their UPPER_CASE module-level constants, read now (so a patched one counts).
- ``file_manifest``: SHA-1 of (relative name, size, SHA-1 of bytes) of data files.
- ``fingerprint``: a short, stable hash of JSON-serialisable settings (the stamp itself).
- ``rules_key``: the fingerprint of a rule-based computation (settings, code, constants and the
  image libraries' versions), shared by the anatomy and pool caches.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

PACKAGE = "cxrssl"
PACKAGE_ROOT = Path(__file__).resolve().parent
_CONSTANT = re.compile(r"_?[A-Z][A-Z0-9_]*")
_CHUNK = 1 << 20


def module_file(name: str) -> Path | None:
    """Source file of a cxrssl module or package name, or None when there is none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_ROOT.joinpath(*parts[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT).with_suffix("")
    parts = [PACKAGE, *rel.parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(name: str, path: Path) -> set[str]:
    """cxrssl modules named by the import statements of one file (lazy imports included)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
    return {m for m in found if module_file(m) is not None}


@functools.cache
def modules_of(roots: tuple[str, ...]) -> tuple[str, ...]:
    """Every cxrssl module that running ``roots`` may execute, sorted.

    Args:
        roots: module names; a package stands for all its modules (recursively).

    Returns:
        The roots, every cxrssl module they import (transitively) and their parent packages.
    """
    todo: list[str] = []
    for root in roots:
        path = module_file(root)
        if path is None:
            raise ValueError(f"{root!r} is not a module of {PACKAGE}")
        todo.append(root)
        if path.name == "__init__.py":
            todo += [_module_name(p) for p in sorted(path.parent.rglob("*.py"))]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        if path is None:
            continue
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += parents + sorted(_imports(name, path))
    return tuple(sorted(seen))


@functools.cache
def _source_hash(modules: tuple[str, ...]) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    for name in modules:
        path = module_file(name)
        if path is not None:
            text = path.read_bytes()
            rel = path.relative_to(PACKAGE_ROOT).as_posix()
            digest.update(f"{rel}\0{len(text)}\0".encode() + text)
    return digest.hexdigest()


def source_hash(modules: Iterable[str] | None = None) -> str:
    """SHA-1 of the source text of ``modules`` (default: the whole cxrssl package).

    Computed once per process and set of modules: the code a process runs is the code it
    imported when it started.
    """
    if modules is None:
        modules = modules_of((PACKAGE,))
    return _source_hash(tuple(sorted(set(modules))))


def _plain(value: Any) -> Any:
    """A JSON-able form of a parameter value; raises TypeError for anything else."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple | list | frozenset | set):
        items = [_plain(v) for v in value]
        return items if isinstance(value, tuple | list) else sorted(items, key=repr)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _plain(value.tolist())
    raise TypeError(type(value).__name__)


def constants(modules: Iterable[str]) -> dict[str, Any]:
    """UPPER_CASE module-level constants of ``modules`` with plain values, read now.

    Values that are not data (functions, classes, tables of functions) are left out; their
    code is covered by ``source_hash``.

    Returns:
        ``"module.NAME" -> value`` (JSON-able).
    """
    found: dict[str, Any] = {}
    for name in modules:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if _CONSTANT.fullmatch(attr):
                try:
                    found[f"{name}.{attr}"] = _plain(value)
                except TypeError:
                    continue
    return found


def file_sha1(path: str | Path) -> str:
    """SHA-1 of a file's bytes."""
    digest = hashlib.sha1(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(paths: Iterable[str | Path]) -> str:
    """SHA-1 of (relative name, size, SHA-1 of bytes) of each file, in the given order.

    Names are relative to the files' common folder, so a moved or copied data folder keeps
    its manifest while a renamed, added, removed or rewritten file changes it. Not cached:
    files may change between two calls.

    Raises:
        OSError: a file cannot be read.
    """
    files = [Path(p).resolve() for p in paths]
    try:
        root = Path(os.path.commonpath([str(p.parent) for p in files])) if files else None
    except ValueError:  # different drives
        root = None
    digest = hashlib.sha1(usedforsecurity=False)
    for path in files:
        name = path.relative_to(root).as_posix() if root is not None else path.as_posix()
        row = [name, path.stat().st_size, file_sha1(path)]
        digest.update(json.dumps(row).encode() + b"\n")
    return digest.hexdigest()


def fingerprint(settings: Any) -> str:
    """A short, stable hash of JSON-serialisable settings (key order does not matter)."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob, usedforsecurity=False).hexdigest()[:16]


def rules_key(modules: Sequence[str], settings: Mapping[str, Any]) -> str:
    """The cache key of a rule-based image computation, the same for all its images.

    Args:
        modules: every cxrssl module that computes it (e.g. from :func:`modules_of`).
        settings: what else the output depends on (kind, method, size, entry format...).

    Returns:
        The :func:`fingerprint` of the settings, the modules' source hash, their UPPER_CASE
        constants read now, and the OpenCV, NumPy and pydicom versions.
    """
    import cv2
    import numpy as np
    import pydicom

    parts = {
        **settings,
        "code": source_hash(tuple(modules)),
        "constants": constants(modules),
        "libraries": [cv2.__version__, np.__version__, pydicom.__version__],
    }
    return fingerprint(parts)
