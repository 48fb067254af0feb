"""The study report: one self-contained HTML file, the same numbers as JSON, and Markdown.

The report reads one plain dict (the ``study`` of :func:`cxrssl.study.pipeline.run_study`,
also written as ``report.json`` without the pictures):

- ``title``, ``command`` (to reproduce), ``created``, ``environment``, ``config``;
- ``data``: images, patients, and per split side the images and patients;
- ``rules``: {methods: {method: {metric: summary}}, per_image, files, worst, note} and
  ``anatomy``: a gallery of the rule-based lungs, regions and pathology candidates;
- ``efficiency``: points (mean ± std per method, K, test set), differences (paired with
  scratch, CI, verdict), rules (per test set), epochs (to reach scratch), k_order, note, png;
- ``pretraining``: {method: {history, pool, views}} (``views``: PNG bytes);
- ``curves``: {unit key: {train_loss, val_dice}}; ``predictions``: {method: {unit, items}};
- ``skipped``: sentences saying what was not done and why; ``timings``: {step: seconds}.

Gallery items are {file, caption, picture} plus their score. Sections fold (``<details>``),
pictures are thumbnails that open full size on a click, and a new method is one more key:
no code changes.
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
h1{font-size:1.6em}h2{display:inline;font-size:1.3em}
details{border-top:1px solid #ccc;padding:.5em 0}summary{cursor:pointer;margin:.4em 0}
.wide{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.helps{background:#e3f4e3}td.hurts{background:#fbe3e3}
img{max-width:100%}img.plot{max-width:min(100%,900px)}
figure{display:inline-block;margin:.4em;text-align:center;vertical-align:top;max-width:100%}
img.thumb{max-width:240px;max-height:240px;border:1px solid #ddd;cursor:zoom-in}
figcaption{font-size:.85em;max-width:260px}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
.note{color:#666;font-size:.9em}
#zoom{display:none;position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:9;
align-items:center;justify-content:center;cursor:zoom-out}
#zoom img{max-width:96vw;max-height:96vh;background:#fff}
"""
_ZOOM = """<div id="zoom" onclick="this.style.display='none'"><img alt="full size"></div>
<script>document.addEventListener('click',function(e){var t=e.target;
if(t.classList&&t.classList.contains('thumb')){var z=document.getElementById('zoom');
z.firstChild.src=t.src;z.style.display='flex';}});</script>"""


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _img(picture: bytes, alt: str, kind: str = "plot") -> str:
    mime = "image/jpeg" if picture[:2] == b"\xff\xd8" else "image/png"
    data = base64.b64encode(picture).decode()
    return f'<img class="{kind}" src="data:{mime};base64,{data}" alt="{html.escape(alt)}">'


def _section(title: str, body: str, open_: bool = True) -> str:
    return (
        f"<details{' open' if open_ else ''}><summary><h2>{html.escape(title)}</h2></summary>"
        f"{body}</details>"
    )


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>" if text else ""


def _figures(items: list[dict[str, Any]]) -> str:
    return "".join(
        f"<figure>{_img(g['picture'], g['caption'], 'thumb')}"
        f"<figcaption>{html.escape(g['caption'])}</figcaption></figure>"
        for g in items
        if g.get("picture")
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    def cell(c: str) -> str:
        verdict = next((v for v in ("helps", "hurts") if c.endswith(v)), "")
        cls = "num" if c[:1].isdigit() or c[:1] in "-+" else verdict
        return f'<td class="{cls}">{html.escape(c)}</td>'

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def _ms(s: dict[str, Any]) -> str:
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def rules_plot(per_image: dict[str, list[float]]) -> bytes:
    """Distribution of per-image Dice of each rule-based method against the expert masks."""
    fig, ax = plt.subplots(figsize=(6, 2.8))
    names = list(per_image)
    ax.boxplot([per_image[n] for n in names], orientation="horizontal")
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xlabel("Dice against expert lung masks (per image)")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
    return _png(fig)


def curves_plot(curves: dict[str, dict[str, list[float]]]) -> bytes:
    """Training loss and validation Dice per epoch of every fine-tuning unit, one colour per
    method."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.4))
    methods = sorted({key.split("__")[0] for key in curves})
    colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for key, c in sorted(curves.items()):
        method = key.split("__")[0]
        ax0.plot(range(1, len(c["train_loss"]) + 1), c["train_loss"], lw=0.8, c=colours[method])
        if c.get("val_dice"):
            ax1.plot(range(1, len(c["val_dice"]) + 1), c["val_dice"], lw=0.8, c=colours[method])
    ax0.set(xlabel="epoch", ylabel="training loss", yscale="log")
    ax1.set(xlabel="epoch", ylabel="validation Dice")
    for m in methods:
        ax1.plot([], [], c=colours[m], label=m)
    ax1.legend(fontsize=7)
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    return _png(fig)


def pretraining_plot(runs: dict[str, dict[str, Any]]) -> bytes:
    """Per pre-training method: the loss (train solid, held-out dashed), its components, the
    held-out retrieval accuracy and MedSASS's Dice against the pseudo-masks, per epoch."""
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.2))
    for i, (method, run) in enumerate(sorted(runs.items())):
        rows = run["history"]
        epochs = [r["epoch"] for r in rows]
        c = f"C{i % 10}"
        axes[0].plot(epochs, [r.get("train_loss") for r in rows], c=c, label=method)
        axes[0].plot(epochs, [r.get("val_loss") for r in rows], c=c, ls="--")
        parts = sorted(
            {k for r in rows for k in r if k.startswith("train_")} - {"train_loss", "train_skipped"}
        )
        for j, part in enumerate(parts):
            axes[1].plot(
                epochs, [r.get(part) for r in rows], c=c, ls=["-", "--", ":", "-."][j % 4],
                label=f"{method}: {part[6:]}",
            )  # fmt: skip
        if any("val_retrieval" in r for r in rows):
            axes[2].plot(epochs, [r.get("val_retrieval") for r in rows], c=c, label=method)
        if any("val_pseudo_dice" in r for r in rows):
            axes[3].plot(epochs, [r.get("val_pseudo_dice") for r in rows], c=c, label=method)
    titles = ("loss (held-out dashed)", "loss components", "retrieval accuracy", "pseudo-mask Dice")
    for ax, title in zip(axes, titles, strict=True):
        ax.set(xlabel="epoch", title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    return _png(fig)


def _rules_rows(rules: dict[str, Any]) -> list[list[str]]:
    rows = []
    for method, summ in rules["methods"].items():
        d = summ["dice"]
        ci = f"[{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
        rows.append(
            [method, _ms(d), ci, _ms(summ["iou"]), str(d["n"]), f"{rules['worst'][method]:.3f}"]
        )
    return rows


def _find(items: list[dict[str, Any]], **key: Any) -> dict[str, Any] | None:
    return next((i for i in items if all(i.get(k) == v for k, v in key.items())), None)


def efficiency_rows(eff: dict[str, Any], test: str) -> list[list[str]]:
    """One row per method: mean ± std at each K."""
    methods = sorted({p["method"] for p in eff["points"] if p["test"] == test})
    methods.sort(key=lambda m: m != "scratch")
    rows = []
    for method in methods:
        cells = [method]
        for k in eff["k_order"]:
            p = _find(eff["points"], test=test, method=method, k=k)
            cells.append("" if p is None else f"{p['mean']:.3f} ± {p['std']:.3f}")
        rows.append(cells)
    return rows


def difference_rows(eff: dict[str, Any], test: str) -> list[list[str]]:
    """One row per method and K: the paired difference from scratch, its CI and verdict."""
    rows = []
    for d in sorted(
        (d for d in eff["differences"] if d["test"] == test), key=lambda d: d["method"]
    ):
        if d.get("mean") is None or d["mean"] != d["mean"]:
            rows.append([d["method"], d["k"], "", "", d["verdict"]])
            continue
        ci = f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        rows.append([d["method"], d["k"], f"{d['mean']:+.3f}", ci, d["verdict"]])
    order = {k: i for i, k in enumerate(eff["k_order"])}
    rows.sort(key=lambda r: (r[0], order.get(r[1], 0)))
    return rows


def epochs_rows(eff: dict[str, Any]) -> list[list[str]]:
    """Epochs to reach scratch's best validation Dice, per method and K."""
    rows = []
    for e in eff.get("epochs", []):
        mine = "not reached" if e["epochs"] is None else f"{e['epochs']:.1f}"
        ref = "" if e["scratch_epochs"] is None else f"{e['scratch_epochs']:.1f}"
        ratio = (
            f"{e['epochs'] / e['scratch_epochs']:.2f}"
            if e["epochs"] is not None and e["scratch_epochs"]
            else ""
        )
        rows.append(
            [e["method"], e["k"], f"{e['reached']} of {e['seeds']}", mine, ref, ratio,
             str(e["epochs_run"])]
        )  # fmt: skip
    return rows


def headline(eff: dict[str, Any]) -> str:
    """One sentence per method at the smallest K, in domain."""
    k = eff["k_order"][0]
    parts = []
    for d in eff["differences"]:
        if d["test"] == "in domain" and d["k"] == k:
            delta = "" if d["mean"] != d["mean"] else f" ({d['mean']:+.3f} Dice)"
            parts.append(f"{d['method']}: {d['verdict']}{delta}")
    return f"At K = {k} labelled images, against scratch: " + "; ".join(parts) + "."


def _efficiency_html(eff: dict[str, Any]) -> str:
    tests = sorted({p["test"] for p in eff["points"]}, key=lambda t: t != "in domain")
    body = [_img(eff["png"], "label-efficiency plot")] if eff.get("png") else []
    ks = [f"K = {k}" for k in eff["k_order"]]
    for test in tests:
        body.append(f"<h3>{html.escape(test)}</h3>")
        if test in eff.get("rules", {}):
            body.append(_note(f"Rule-based lungs (no learning): Dice {eff['rules'][test]:.3f}"))
        body.append(_table(["method", *ks], efficiency_rows(eff, test)))
        body.append(
            _table(
                ["method", "K", "paired difference", "95 % CI", "verdict"],
                difference_rows(eff, test),
            )
        )
    body.append(_note(eff.get("note", "")))
    return "".join(body)


def write_report(study: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``report.html``, ``report.json`` and ``summary.md``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eff = study.get("efficiency")
    parts = [
        f"<h1>{html.escape(study['title'])}</h1>",
        f"<p class='note'>Made {html.escape(study['created'])}. Not for clinical use.</p>",
    ]
    if eff and eff.get("differences"):
        parts.append(f"<p><b>{html.escape(headline(eff))}</b></p>")
    data = study["data"]
    parts.append(
        _section(
            "Data",
            _table(
                ["", "images", "patients"],
                [["all", str(data["images"]), str(data["patients"])]]
                + [[s, str(v["images"]), str(v["patients"])] for s, v in data["split"].items()],
            )
            + _note(data.get("note", "")),
        )
    )
    if study.get("rules") or study.get("anatomy"):
        body = ""
        if study.get("rules"):
            rules = study["rules"]
            header = ["method", "Dice mean ± std", "95 % CI", "IoU mean ± std", "n", "worst Dice"]
            body += _table(header, _rules_rows(rules))
            body += _img(rules_plot(rules["per_image"]), "rule-based Dice distribution")
            body += _note(rules.get("note", ""))
        body += _note(
            "Default method, worst / median / best images: lungs (patient's right green, left "
            "blue, expert red), the six regions, the pathology-candidate map."
        )
        body += _figures(study.get("anatomy", []))
        parts.append(_section("Rule-based anatomy", body))
    if eff:
        parts.append(_section("Label efficiency: lung segmentation", _efficiency_html(eff)))
        if eff.get("epochs"):
            header = ["method", "K", "seeds reaching it", "epochs", "scratch epochs", "ratio",
                      "epochs run"]  # fmt: skip
            body = _table(header, epochs_rows(eff)) + _note(
                "Epochs until the validation Dice first reaches scratch's best validation Dice "
                "(same K draw and seed), mean over the seeds that reach it; scratch's: the "
                "epoch of its best. Seed 000 expects 20 % fewer epochs (ratio 0.8)."
            )
            parts.append(_section("Epochs to reach scratch", body))
    if study.get("pretraining"):
        runs = study["pretraining"]
        body = _img(pretraining_plot(runs), "pre-training curves")
        body += _note(
            "Per epoch: loss on the pool (held-out pool patients dashed), its components, the "
            "held-out retrieval accuracy (is a view's nearest neighbour its partner?) and, for "
            "MedSASS, Dice against the rule-based pseudo-masks."
        )
        body += "<h3>What each method looked at</h3>" + _note(
            "Held-out images: each view with its warped maps and the method's own maps "
            "(attention and segmentation branch for attention, the prediction for medsass)."
        )
        body += _figures(
            [
                {"picture": r["views"], "caption": f"{m} (pool: {r['pool']} images)"}
                for m, r in sorted(runs.items())
            ]
        )
        parts.append(_section("Pre-training", body))
    if study.get("predictions"):
        body = _note("Held-out test images at the smallest K (first seed): expert mask green, "
                     "prediction red; worst, median and best by Dice.")  # fmt: skip
        for method, g in study["predictions"].items():
            body += f"<h3>{html.escape(method)}</h3>" + _figures(g["items"])
        parts.append(_section("Fine-tuned overlays", body))
    if study.get("curves"):
        body = _img(curves_plot(study["curves"]), "fine-tuning curves")
        parts.append(_section("Fine-tuning curves", body, open_=False))
    if study.get("skipped"):
        items = "".join(f"<li>{html.escape(s)}</li>" for s in study["skipped"])
        parts.append(_section("Skipped", f"<ul>{items}</ul>"))
    env = [[k, str(v)] for k, v in study["environment"].items()]
    env += [[f"time: {k}", f"{v:.1f} s"] for k, v in study.get("timings", {}).items()]
    parts.append(_section("Environment", _table(["", ""], env), open_=False))
    config = json.dumps(study.get("config", {}), indent=1, default=str)
    parts.append(
        _section(
            "Reproduce",
            f"<pre>{html.escape(study['command'])}</pre><p>Settings:</p>"
            f"<pre>{html.escape(config)}</pre>",
        )
    )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(study['title'])}</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}{_ZOOM}</body></html>"
    )
    paths = {
        "html": out_dir / "report.html",
        "json": out_dir / "report.json",
        "md": out_dir / "summary.md",
    }
    write_text_atomic(paths["html"], page)
    write_json_atomic(paths["json"], plain(study))
    write_text_atomic(paths["md"], markdown_summary(study))
    return paths


def plain(value: Any) -> Any:
    """``value`` without its pictures (bytes), for JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items() if not isinstance(v, bytes)}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


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
        rows = [[r[0], r[1], r[4], r[5]] for r in _rules_rows(study["rules"])]
        lines += _md_table(["rule-based method", "Dice mean ± std", "n", "worst"], rows)
        lines += [study["rules"].get("note", ""), ""]  # the note names the convention
    eff = study.get("efficiency")
    if eff:
        if eff.get("differences"):
            lines += [headline(eff), ""]
        ks = [f"K = {k}" for k in eff["k_order"]]
        for test in sorted({p["test"] for p in eff["points"]}, key=lambda t: t != "in domain"):
            lines += [f"## {test}", ""]
            lines += _md_table(["method", *ks], efficiency_rows(eff, test))
            lines += _md_table(
                ["method", "K", "paired difference", "95 % CI", "verdict"],
                difference_rows(eff, test),
            )
        if eff.get("epochs"):
            lines += ["## Epochs to reach scratch's best validation Dice", ""]
            lines += _md_table(
                ["method", "K", "seeds reaching it", "epochs", "scratch epochs", "ratio",
                 "epochs run"],
                epochs_rows(eff),
            )  # fmt: skip
        lines += [eff.get("note", ""), ""]
    lines += [f"- skipped: {s}" for s in study.get("skipped", [])]
    timings = study.get("timings", {})
    if "total" in timings:
        lines += ["", f"Job time: {timings['total']:.0f} s on {study['environment']['device']}."]
    lines += ["", "Reproduce:", "", "```", study["command"], "```", ""]
    return "\n".join(lines)


def load_report_json(path: Path) -> dict[str, Any]:
    """Read a ``report.json`` written by :func:`write_report`."""
    result: dict[str, Any] = json.loads(Path(path).read_text())
    return result
