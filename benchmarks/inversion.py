"""Inverted-film detection on the real data: originals flagged and inverted copies caught.

For every image of each source (every ``--step``-th for Kermany), ``is_inverted`` is asked
of the film and of its ``255 - image`` copy. Reads ``--data`` (default ``../shared/data`` or
``$CXR_DATA_DIR``); writes nothing unless ``--json`` is given.

    .venv/bin/python benchmarks/inversion.py
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cxrssl.anatomy.polarity import is_inverted
from cxrssl.io import IMAGE_SUFFIXES, read_gray8

DATA = Path(os.environ.get("CXR_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
SOURCES = (
    "ieee8023_generalblockchain",
    "ieee8023_v7labs",
    "ieee8023_covid_chestxray_labels",
    "jsrt",
    "kermany_pneumonia",
    "cxr_sample_ccby",
    "nih_chestxray14_sample",
)


def _one(path: Path) -> tuple[bool, bool]:
    image = read_gray8(path)
    return is_inverted(image), is_inverted(255 - image)


def main(argv: list[str] | None = None) -> dict[str, dict[str, int]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--step", type=int, default=9, help="every n-th Kermany film")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    results: dict[str, dict[str, int]] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for name in SOURCES:
            folder = args.data / name / "images"
            if not folder.is_dir():
                continue
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if name == "kermany_pneumonia":
                files = files[:: args.step]
            flags = list(pool.map(_one, files, chunksize=16))
            results[name] = {
                "films": len(flags),
                "originals_flagged": sum(f[0] for f in flags),
                "copies_caught": sum(f[1] for f in flags),
            }
            r = results[name]
            print(
                f"{name:<34} {r['films']:>5} films: {r['originals_flagged']} originals "
                f"flagged, {r['copies_caught']} inverted copies caught"
            )
    total = {
        k: sum(r[k] for r in results.values())
        for k in ("films", "originals_flagged", "copies_caught")
    }
    print(
        f"{'total':<34} {total['films']:>5} films: {total['originals_flagged']} originals "
        f"flagged, {total['copies_caught']} inverted copies caught"
    )
    results["total"] = total
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
