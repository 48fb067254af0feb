"""The study report: one self-contained HTML file, the same numbers as JSON, and Markdown.

The report reads one plain dict (the ``study`` below, also written as ``report.json``):

- ``title``, ``command`` (to reproduce), ``created``, ``environment`` (versions, device);
- ``data``: images, patients, and per split side the images and patients;
- ``rules``: {method: {metric: summary}} for rule-based masks against expert masks;
- ``efficiency``: {"metric": name, "methods": {method: [{k, n_train, mean, std, n, values}]}};
- ``curves``: {unit key: {"train_loss": [...], "val_dice": [...]}};
- ``gallery``: [{file, dice, caption, png}] with ``png`` the overlay's bytes (HTML only);
- ``skipped``: sentences saying what was not done and why; ``timings``: {step: seconds}.

A new method is one more key under ``rules`` or ``efficiency.methods``: no code changes.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from cxrssl.files import write_text_atomic
from cxrssl.study.runner import write_json_atomic

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.4em;text-align:center;vertical-align:top}
figure img{max-width:320px;border:1px solid #ddd}figcaption{font-size:.85em}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}.note{color:#666;font-size:.9em}
"""


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def efficiency_plot(eff: dict[str, Any]) -> bytes:
    """Mean ± std of the metric against the number of labelled images, one line per method."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, points in eff["methods"].items():
        xs = [p["n_train"] for p in points]
        ax.errorbar(
            xs,
            [p["mean"] for p in points],
            yerr=[p["std"] for p in points],
            marker="o",
            capsize=4,
            label=method,
        )
    ax.set_xscale("log")
    ticks = sorted({p["n_train"] for points in eff["methods"].values() for p in points})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("labelled training images (log scale)")
    ax.set_ylabel(f"{eff['metric']} on held-out patients")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def curves_plot(curves: dict[str, dict[str, list[float]]]) -> bytes:
    """Training loss and validation Dice per epoch for every unit."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, c in sorted(curves.items()):
        ax0.plot(range(1, len(c["train_loss"]) + 1), c["train_loss"], lw=1, label=key)
        if c.get("val_dice"):
            ax1.plot(range(1, len(c["val_dice"]) + 1), c["val_dice"], lw=1, label=key)
    ax0.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax1.set(xlabel="epoch", ylabel="validation Dice")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax1.legend(fontsize=6)
    return _png(fig)


def rules_plot(per_image: dict[str, list[float]]) -> bytes:
    """Distribution of per-image Dice of each rule-based method against the expert masks."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(per_image)
    ax.boxplot([per_image[n] for n in names], orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xlabel("Dice against expert lung masks (per image)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    return _png(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(c)}</td>'
            if c[:1].isdigit() or c[:1] == "-"
            else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _ms(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _rules_rows(rules: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, summ in rules["methods"].items():
        d = summ["dice"]
        ci = f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
        rows.append(
            [method, _ms(d), ci, _ms(summ["iou"]), str(d["n"]), f"{rules['worst'][method]:.3f}"]
        )
    return rows


def _eff_rows(eff: dict[str, Any]) -> list[list[str]]:
    return [
        [method, str(p["k"]), str(p["n_train"]), _ms(p), str(p["n"])]
        for method, points in eff["methods"].items()
        for p in points
    ]


def write_report(study: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.json`` and ``summary.md``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = [
        f"<h1>{html.escape(study['title'])}</h1>",
        f"<p class='note'>Made {html.escape(study['created'])}. Not for clinical use.</p>",
    ]
    data = study["data"]
    parts.append("<h2>Data</h2>")
    parts.append(
        _table(
            ["", "images", "patients"],
            [["all", str(data["images"]), str(data["patients"])]]
            + [[side, str(v["images"]), str(v["patients"])] for side, v in data["split"].items()],
        )
    )
    parts.append(f"<p class='note'>{html.escape(data.get('note', ''))}</p>")
    if study.get("rules"):
        parts.append("<h2>Rule-based lung masks against expert masks</h2>")
        parts.append(
            _table(
                ["method", "Dice mean ± std", "95 % CI", "IoU mean ± std", "n", "worst Dice"],
                _rules_rows(study["rules"]),
            )
        )
        parts.append(_img(rules_plot(study["rules"]["per_image"]), "rule-based Dice distribution"))
        parts.append(f"<p class='note'>{html.escape(study['rules'].get('note', ''))}</p>")
    if study.get("efficiency"):
        eff = study["efficiency"]
        parts.append("<h2>Label efficiency: supervised lung segmentation</h2>")
        parts.append(
            _table(
                ["method", "K", "training images", f"{eff['metric']} mean ± std", "seeds"],
                _eff_rows(eff),
            )
        )
        parts.append(_img(efficiency_plot(eff), "label-efficiency curve"))
        parts.append(f"<p class='note'>{html.escape(eff.get('note', ''))}</p>")
    if study.get("curves"):
        parts.append("<h2>Loss curves</h2>")
        parts.append(_img(curves_plot(study["curves"]), "loss curves"))
    if study.get("gallery"):
        note = study.get("gallery_note", "Expert mask in green, prediction in red.")
        parts.append(f"<h2>Overlay gallery</h2><p class='note'>{html.escape(note)}</p>")
        parts.extend(
            f"<figure>{_img(g['png'], g['caption'])}"
            f"<figcaption>{html.escape(g['caption'])}</figcaption></figure>"
            for g in study["gallery"]
        )
    if study.get("skipped"):
        parts.append(
            "<h2>Skipped</h2><ul>"
            + "".join(f"<li>{html.escape(s)}</li>" for s in study["skipped"])
            + "</ul>"
        )
    parts.append("<h2>Environment</h2>")
    parts.append(
        _table(
            ["", ""],
            [[k, str(v)] for k, v in study["environment"].items()]
            + [[f"time: {k}", f"{v:.1f} s"] for k, v in study.get("timings", {}).items()],
        )
    )
    parts.append(f"<h2>Reproduce</h2><pre>{html.escape(study['command'])}</pre>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(study['title'])}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )
    paths = {
        "html": out_dir / "report.html",
        "json": out_dir / "report.json",
        "md": out_dir / "summary.md",
    }
    write_text_atomic(paths["html"], page)
    plain = {
        **study,
        "gallery": [{k: v for k, v in g.items() if k != "png"} for g in study.get("gallery", [])],
    }
    write_json_atomic(paths["json"], plain)
    write_text_atomic(paths["md"], markdown_summary(study))
    return paths


def markdown_summary(study: dict[str, Any]) -> str:
    """A short Markdown summary of the study's numbers."""
    d = study["data"]
    lines = [
        f"# {study['title']}",
        "",
        f"Data: {d['images']} images, {d['patients']} patients; "
        + ", ".join(
            f"{s} {v['images']} images / {v['patients']} patients" for s, v in d["split"].items()
        ),
        "",
    ]
    if study.get("rules"):
        lines += ["| rule-based method | Dice mean ± std | n | worst |", "|---|---|---|---|"]
        lines += [f"| {r[0]} | {r[1]} | {r[4]} | {r[5]} |" for r in _rules_rows(study["rules"])]
        lines += ["", study["rules"].get("note", ""), ""]  # the note names the convention
    if study.get("efficiency"):
        eff = study["efficiency"]
        lines += [
            f"| method | K | training images | {eff['metric']} mean ± std | seeds |",
            "|---|---|---|---|---|",
        ]
        lines += ["| " + " | ".join(r) + " |" for r in _eff_rows(eff)]
        lines += ["", eff.get("note", ""), ""]
    lines += [f"- skipped: {s}" for s in study.get("skipped", [])]
    lines += ["", "Reproduce:", "", "```", study["command"], "```", ""]
    return "\n".join(lines)


def load_report_json(path: Path) -> dict[str, Any]:
    """Read a ``report.json`` written by :func:`write_report`."""
    result: dict[str, Any] = json.loads(Path(path).read_text())
    return result
