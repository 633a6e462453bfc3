"""A run's visual report: one self-contained HTML file (inline CSS and SVG, JPEG data URIs, no JS, no URLs).

Sections: a header (run, split, checkpoint, cache keys and where their features came from, with a
banner for random-weight or synthetic features); the ED@Z table of the model per generation strategy
and of the no-training baselines (from `lta evaluate`'s metrics of the shown checkpoint, matched by their
fingerprint), with the oracle baselines (those reading the true labels) in a table apart and never marked
best; the mean ED@z curves, z = 1..Z, as inline SVG charts (one polyline per method, with a legend); then a few windows, each with thumbnails of its observed
segments, the ground-truth future and the K predicted sequences, every position coloured by
correctness (`hit`: verb and noun right, `half`: one of them, `miss`: neither; `unscored` on the
unlabelled test split), with each sequence's action edit distance / Z. The footer names the code version.

This module only formats; the caller decodes thumbnails (extract/) and computes predictions
(train_heads.evaluate), so train_heads never imports the video stack.
"""
from __future__ import annotations

import base64
import datetime
import html
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

# match count at a position (verb right + noun right) -> CSS class
MATCH_CLASS = {2: "hit", 1: "half", 0: "miss"}
UNSCORED_CLASS = "unscored"
CURVE_WHATS = ("verb", "noun", "action")
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
BASELINE_NOTES = {
    "frequency_prior": "training class frequencies",
    "markov": "Markov chain from the model's recognised last action",
    "markov_knn": "Markov chain from a kNN-recognised last action",
    "markov_oracle": "Markov chain from the true last action (upper bound, uses labels)",
    "knn_retrieval": "futures of the nearest training windows",
}

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;max-width:1500px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:18px 0 6px}
.banner{padding:10px 14px;margin:10px 0;border-radius:4px;font-weight:600}
.banner.warn{background:#fff3cd;border:1px solid #e0b000}.banner.info{background:#e8f0fe;border:1px solid #8ab4f8}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;font-size:13px;margin:8px 0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
table.metrics{border-collapse:collapse;font-size:13px}
table.metrics th,table.metrics td{border:1px solid #ccc;padding:3px 8px;text-align:right}
table.metrics td.name,table.metrics th.name{text-align:left}table.metrics td.note{text-align:left;color:#666}
table.metrics tr.model td.name{font-weight:600}table.metrics td.best{background:#c8e6c9;font-weight:600}
table.metrics.oracle{color:#555}table.metrics.oracle td.name{font-style:italic}
.swatch{display:inline-block;width:18px;height:4px;vertical-align:middle;margin-right:6px}
.charts{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
svg.ed-curve{background:#fff;border:1px solid #ddd}
section.window{border:1px solid #ddd;border-radius:6px;padding:8px 12px;margin:14px 0}
.thumbs{display:flex;flex-wrap:wrap;gap:8px}
figure.seg{margin:0;font-size:11px;text-align:center;width:164px}
figure.seg img{display:block;border:1px solid #999}
.thumb.missing{width:160px;height:120px;display:flex;align-items:center;justify-content:center;text-align:center;
background:repeating-linear-gradient(45deg,#eee,#eee 8px,#ddd 8px,#ddd 16px);border:1px dashed #999;font-size:11px}
.scroll{overflow-x:auto}
table.seq{border-collapse:collapse;font-size:10px;margin-top:8px}
table.seq th,table.seq td{border:1px solid #bbb;padding:2px 3px;text-align:center;min-width:46px;line-height:1.2}
table.seq th.row{text-align:left;white-space:nowrap;min-width:0}table.seq td.ed{font-weight:600;min-width:0}
table.seq tr.truth td{background:#e3e3e3;font-weight:600}
td.hit,span.hit{background:#a5d6a7}td.half,span.half{background:#ffe082}td.miss,span.miss{background:#ef9a9a}
td.unscored{background:#f5f5f5}tr.best th.row{color:#1b5e20}
.legend span{display:inline-block;padding:1px 8px;margin-right:6px;font-size:12px;border:1px solid #bbb}
.note{color:#555;font-size:12px}
footer{margin-top:30px;color:#777;font-size:12px}
"""


@dataclass
class Segment:
    """One observed segment: its identity, labels and a thumbnail (JPEG bytes) or why there is none."""

    action_idx: int
    start_sec: float
    end_sec: float
    verb: int  # -1 when unlabelled
    noun: int
    jpeg: bytes | None = None
    missing_reason: str = ""  # why `jpeg` is None
    recognised: tuple[int, int] | None = None  # the model's recognition head, if it has one


@dataclass
class WindowReport:
    """One forecasting window: observed segments, the K predictions and (labelled splits) the truth."""

    key: str
    clip_uid: str
    observed: list[Segment]
    pred_verb: np.ndarray  # (K, Z)
    pred_noun: np.ndarray  # (K, Z)
    future_verb: np.ndarray | None = None  # (Z,), None on an unlabelled split
    future_noun: np.ndarray | None = None
    sequence_ed: np.ndarray | None = None  # (K,) action edit distance / Z of each sequence
    video: str = ""  # the clip file the thumbnails came from, or "" when missing


@dataclass
class ReportHeader:
    run_name: str
    split: str
    checkpoint: str
    generator: str
    seed: int
    num_split_windows: int
    config: dict[str, str] = field(default_factory=dict)  # label -> value, shown as given
    cache_keys: dict[str, str] = field(default_factory=dict)  # modality -> cache key
    provenance: dict[str, str] = field(default_factory=dict)  # cache key -> where its features came from
    random_weight_keys: list[str] = field(default_factory=list)
    synthetic_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint_sha256: str = ""  # of the checkpoint file the page shows
    code_version: str = ""  # features.version.code_version() of the code that wrote the page


def feature_provenance(spec: dict) -> tuple[str, str]:
    """(kind, description) of a store spec: kind is "random", "synthetic" or "pretrained"."""
    if spec.get("synthetic"):
        return "synthetic", "synthetic features (class embeddings + noise, no video model)"
    extractor = spec.get("extractor") or {}
    weights = str(extractor.get("weights", spec.get("weights", "")))
    name = extractor.get("name", "?")
    if weights == "random":
        return "random", f"{name} with RANDOM weights"
    return "pretrained", f"{name}, weights {weights or 'unknown'}"


def position_matches(pred_verb: np.ndarray, pred_noun: np.ndarray, future_verb: np.ndarray,
                     future_noun: np.ndarray) -> np.ndarray:
    """(K, Z) predictions vs (Z,) truth -> (K, Z) number of right fields (0, 1 or 2) per position."""
    return (np.asarray(pred_verb) == future_verb[None]).astype(np.int64) + (np.asarray(pred_noun) == future_noun[None])


def short_name(name: str) -> str:
    """`take_(pick,_grab,_get)` -> `take`; `nut_(food)` -> `nut`; underscores become spaces."""
    return name.split("_(")[0].replace("_", " ")


def report_methods(metrics: dict[str, Any]) -> list[str]:
    """Methods scored in `metrics` (`<method>.action_ed`): the model's generators first, then baselines, then oracles."""
    oracles = set(oracle_methods(metrics))
    other_key_sets = set(metrics.get("key_sets", {})) - {"main"}  # evaluate's side-by-side sets (not this table's keys)
    names = [k[: -len(".action_ed")] for k in metrics
             if k.endswith(".action_ed") and k.split(".", 1)[0] not in other_key_sets]
    return sorted(names, key=lambda n: (n in oracles, not n.startswith("model."), n))


def oracle_methods(metrics: dict[str, Any]) -> list[str]:
    """The scored methods that read the split's true labels (`oracle_methods`, written by evaluate_split)."""
    return [m for m in metrics.get("oracle_methods", []) if f"{m}.action_ed" in metrics]


def method_colours(metrics: dict[str, Any]) -> dict[str, str]:
    """One colour per method, shared by the table swatches, the curves and the chart legends."""
    return {m: _colour(i) for i, m in enumerate(report_methods(metrics))}


def _method_label(metrics: dict[str, Any], method: str) -> str:
    return f"{method} (oracle)" if method in oracle_methods(metrics) else method


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _label(taxonomy: Any, verb: int, noun: int, *, short: bool = True) -> str:
    if verb < 0 or noun < 0:
        return "unlabelled"
    v, n = taxonomy.verbs[verb], taxonomy.nouns[noun]
    return f"{short_name(v)} {short_name(n)}" if short else f"{v} / {n}"


def _colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _method_rows(metrics: dict[str, Any], methods: Sequence[str], cols: Sequence[tuple[str, str]],
                 best: dict[str, float] | None) -> list[str]:
    colours, oracles = method_colours(metrics), set(oracle_methods(metrics))
    out = []
    for m in methods:
        kind = "model" if m.startswith("model.") else "oracle" if m in oracles else "baseline"
        note = f"trained head, generator {m[len('model.'):]}" if kind == "model" else BASELINE_NOTES.get(m, "")
        if kind == "oracle" and not note:
            note = "reads the true labels: an upper bound, not a competitor"
        out.append(f'<tr class="{kind}" data-method="{_e(m)}"><td class="name">'
                   f'<span class="swatch" style="background:{colours[m]}"></span>{_e(m)}</td>')
        for c, _ in cols:
            v = metrics.get(f"{m}.{c}")
            cls = ' class="best"' if best is not None and v is not None and v == best.get(c) else ""
            out.append(f"<td{cls}>{'-' if v is None else f'{v:.4f}'}</td>")
        out.append(f'<td class="note">{_e(note)}</td></tr>')
    return out


def metric_table(metrics: dict[str, Any]) -> str:
    """HTML tables of ED@Z verb / noun / action and action AUED per method.

    The first (`#metrics-table`) holds the model's generators and the baselines that see no labels of the split,
    with the best value per column marked. The oracle baselines (`oracle_methods`: they read the true labels)
    come apart in `#oracle-table`, under a note, and are never marked best.
    """
    methods = report_methods(metrics)
    oracles = set(oracle_methods(metrics))
    fair = [m for m in methods if m not in oracles]
    z = len(metrics.get(f"{methods[0]}.action_ed_curve", [])) if methods else 0
    cols = [("verb_ed", f"verb ED@{z}"), ("noun_ed", f"noun ED@{z}"), ("action_ed", f"action ED@{z}"),
            ("action_aued", "action AUED")]
    best = {c: min((v for m in fair if (v := metrics.get(f"{m}.{c}")) is not None), default=np.inf) for c, _ in cols}
    head = ['<thead><tr><th class="name">method</th>', *(f"<th>{_e(title)}</th>" for _, title in cols),
            '<th class="name">what it is</th></tr></thead>']
    out = ['<table class="metrics" id="metrics-table">', *head, "<tbody>", *_method_rows(metrics, fair, cols, best),
           "</tbody></table>"]
    if oracles:
        out += ['<p class="note" id="oracle-note">Oracle baselines, shown apart: they read the true labels of the '
                "observed segments, which a forecaster does not have, so they bound what a perfect recogniser could "
                "reach and are never marked best.</p>",
                '<table class="metrics oracle" id="oracle-table">', *head, "<tbody>",
                *_method_rows(metrics, [m for m in methods if m in oracles], cols, None), "</tbody></table>"]
    return "".join(out)


def _dash(metrics: dict[str, Any], method: str) -> str:
    """Line style: the model solid, baselines dashed, oracle baselines dotted."""
    if method.startswith("model."):
        return ""
    return ' stroke-dasharray="1.5,2.5"' if method in oracle_methods(metrics) else ' stroke-dasharray="5,3"'


def ed_curve_svg(metrics: dict[str, Any], what: str = "action", *, width: int = 420, height: int = 280,
                 legend_columns: int = 2) -> str:
    """Inline SVG of the mean `what` ED@z curve, z = 1..Z, one polyline per method, and a legend below the plot.

    Model solid, baselines dashed, oracle baselines dotted; `height` is the plot's part, the legend adds its rows.
    """
    methods = [m for m in report_methods(metrics) if metrics.get(f"{m}.{what}_ed_curve")]
    colours = method_colours(metrics)
    left, right, top, bottom = 46, 12, 24, 36
    pw, ph = width - left - right, height - top - bottom
    row_h, col_w = 16, (width - left) / max(legend_columns, 1)
    rows = -(-len(methods) // max(legend_columns, 1))
    total = height + (rows * row_h + 10 if methods else 0)
    z = max((len(metrics[f"{m}.{what}_ed_curve"]) for m in methods), default=1)
    x = lambda zi: left + (zi - 1) / max(z - 1, 1) * pw  # noqa: E731  z = 1..Z -> pixels
    y = lambda v: top + (1.0 - min(max(v, 0.0), 1.0)) * ph  # noqa: E731  ED in [0, 1] -> pixels
    out = [f'<svg class="ed-curve" id="ed-curve-{_e(what)}" width="{width}" '
           f'height="{total}" viewBox="0 0 {width} {total}" role="img" aria-label="{_e(what)} ED@z">',
           f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" font-size="13" font-weight="600">'
           f"{_e(what)} ED@z</text>"]
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.2f}</text>')
    ticks = sorted({1, *range(5, z + 1, 5), z})
    for t in ticks:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{top + ph}" stroke="#f0f0f0"/>'
                   f'<text x="{x(t):.1f}" y="{top + ph + 15}" text-anchor="middle" font-size="11">{t}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>'
               f'<text x="{left + pw / 2:.0f}" y="{height - 4}" text-anchor="middle" font-size="11">'
               "z (forecast prefix length)</text>")
    for m in methods:
        curve = metrics[f"{m}.{what}_ed_curve"]
        points = " ".join(f"{x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(curve))
        out.append(f'<polyline class="curve" data-method="{_e(m)}" points="{points}" fill="none" '
                   f'stroke="{colours[m]}" stroke-width="1.8"{_dash(metrics, m)}><title>{_e(_method_label(metrics, m))}'
                   "</title></polyline>")
    if methods:
        out.append('<g class="legend">')
        for i, m in enumerate(methods):
            lx, ly = left + (i % legend_columns) * col_w, height + 8 + (i // legend_columns) * row_h
            out.append(f'<g class="legend-entry" data-method="{_e(m)}">'
                       f'<line x1="{lx:.1f}" x2="{lx + 22:.1f}" y1="{ly + 6:.1f}" y2="{ly + 6:.1f}" stroke="{colours[m]}" '
                       f'stroke-width="1.8"{_dash(metrics, m)}/>'
                       f'<text x="{lx + 27:.1f}" y="{ly + 10:.1f}" font-size="11">{_e(_method_label(metrics, m))}</text></g>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _header_html(h: ReportHeader) -> str:
    out = [f"<h1>LTA report: {_e(h.run_name)}</h1>"]
    if h.random_weight_keys:
        out.append('<div class="banner warn" id="random-weights-banner">Features from RANDOM-WEIGHT extractors '
                   f"({_e(', '.join(h.random_weight_keys))}): these numbers show that the pipeline works, "
                   "not how well a real model forecasts.</div>")
    if h.synthetic_keys:
        out.append('<div class="banner info" id="synthetic-banner">Synthetic features '
                   f"({_e(', '.join(h.synthetic_keys))}): class embeddings plus noise, written without any "
                   "video model.</div>")
    ckpt = f"{h.checkpoint} (sha256 {h.checkpoint_sha256[:16]})" if h.checkpoint_sha256 else h.checkpoint
    rows = [("run", h.run_name), ("split", f"{h.split} ({h.num_split_windows} windows)"), ("checkpoint", ckpt),
            ("shown sequences", f"generator {h.generator}, seed {h.seed} (as `lta predict` writes them)"),
            *h.config.items()]
    rows += [(f"cache key ({m})", f"{k}: {h.provenance.get(k, '?')}") for m, k in h.cache_keys.items()]
    out.append('<dl class="meta">' + "".join(f"<dt>{_e(a)}</dt><dd>{_e(b)}</dd>" for a, b in rows) + "</dl>")
    out += [f'<p class="note">{_e(n)}</p>' for n in h.notes]
    return "".join(out)


def _segment_html(seg: Segment, taxonomy: Any) -> str:
    caption = f"#{seg.action_idx} {seg.start_sec:.1f}-{seg.end_sec:.1f} s<br>{_e(_label(taxonomy, seg.verb, seg.noun))}"
    if seg.recognised is not None:
        caption += f"<br><i>recognised: {_e(_label(taxonomy, *seg.recognised))}</i>"
    mid = (seg.start_sec + seg.end_sec) / 2
    if seg.jpeg is not None:
        data = base64.b64encode(seg.jpeg).decode("ascii")
        alt = f"segment {seg.action_idx} at {mid:.2f} s"
        pic = f'<img src="data:image/jpeg;base64,{data}" width="160" alt="{_e(alt)}">'
    else:
        pic = f'<div class="thumb missing" title="{_e(seg.missing_reason)}">no video<br>{_e(seg.missing_reason)}</div>'
    return f'<figure class="seg">{pic}<figcaption>{caption}</figcaption></figure>'


def _cell(taxonomy: Any, verb: int, noun: int, cls: str) -> str:
    title = _label(taxonomy, verb, noun, short=False)
    v, n = short_name(taxonomy.verbs[verb]), short_name(taxonomy.nouns[noun])
    return f'<td class="{cls}" title="{_e(title)}">{_e(v)}<br>{_e(n)}</td>'


def window_html(w: WindowReport, taxonomy: Any, index: int) -> str:
    """One window's block: thumbnails of the observed segments, the truth and the K coloured sequences."""
    k, z = w.pred_verb.shape
    labelled = w.future_verb is not None
    video = f"video {_e(w.video)}" if w.video else "<b>video missing</b> (placeholders shown)"
    out = [f'<section class="window" id="window-{index}" data-key="{_e(w.key)}">',
           f"<h3>window {_e(w.key)}</h3>",
           f'<p class="note">clip {_e(w.clip_uid)}, {len(w.observed)} observed segments, {video}</p>',
           '<div class="thumbs">' + "".join(_segment_html(s, taxonomy) for s in w.observed) + "</div>",
           '<div class="scroll"><table class="seq"><thead><tr><th class="row">z</th>']
    out += [f"<th>{i + 1}</th>" for i in range(z)]
    out.append('<th class="row">action ED</th></tr></thead><tbody>' if labelled else "</tr></thead><tbody>")
    if labelled:
        out.append('<tr class="truth"><th class="row">truth</th>')
        out += [_cell(taxonomy, int(w.future_verb[i]), int(w.future_noun[i]), "truth") for i in range(z)]
        out.append("<td></td></tr>")
        matches = position_matches(w.pred_verb, w.pred_noun, w.future_verb, w.future_noun)  # (K, Z)
        best = int(np.argmin(w.sequence_ed)) if w.sequence_ed is not None else -1
    for j in range(k):
        cls_row = "pred best" if labelled and j == best else "pred"
        star = " &#9733;" if labelled and j == best else ""
        out.append(f'<tr class="{cls_row}" data-seq="{j}"><th class="row">seq {j + 1}{star}</th>')
        for i in range(z):
            cls = MATCH_CLASS[int(matches[j, i])] if labelled else UNSCORED_CLASS
            out.append(_cell(taxonomy, int(w.pred_verb[j, i]), int(w.pred_noun[j, i]), cls))
        if labelled:
            ed = "-" if w.sequence_ed is None else f"{float(w.sequence_ed[j]):.2f}"
            out.append(f'<td class="ed">{ed}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div></section>")
    return "".join(out)


def _fingerprint_html(metrics: dict[str, Any]) -> str:
    """What the ED table was computed from (`metrics["fingerprint"]`, written by `lta evaluate`)."""
    fp = metrics.get("fingerprint") or {}
    if not fp:
        return '<p class="note" id="metrics-fingerprint">no fingerprint: these metrics name no checkpoint hash</p>'
    text = (f"computed by <code>lta evaluate</code> for checkpoint {_e(metrics.get('checkpoint', '?'))} "
            f"(sha256 {_e(str(fp.get('checkpoint_sha256', '?'))[:16])}), generators {_e(', '.join(fp.get('generators', [])))}, "
            f"baselines {_e(', '.join(fp.get('baselines', [])))}, seed {_e(fp.get('seed', '?'))}, "
            f"temperature {_e(fp.get('temperature', '?'))}; fingerprint {_e(fp.get('id', '?'))}")
    return (f'<p class="note" id="metrics-fingerprint" data-fingerprint="{_e(fp.get("id", ""))}" '
            f'data-checkpoint-sha256="{_e(fp.get("checkpoint_sha256", ""))}">{text}</p>')


def render_report(header: ReportHeader, metrics: dict[str, Any] | None, windows: Sequence[WindowReport],
                  taxonomy: Any) -> str:
    """The whole report as one HTML document (str); every text is escaped, nothing is fetched."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>LTA report: {_e(header.run_name)} ({_e(header.split)})</title>", f"<style>{CSS}</style></head><body>",
           _header_html(header), "<h2>ED@Z per method</h2>"]
    if metrics and report_methods(metrics):
        out.append(f'<p class="note">{_e(metrics.get("num_windows", "?"))} windows of split {_e(header.split)}; '
                   "lower is better; best per column in green (oracle baselines excluded). Baselines need no "
                   "training.</p>")
        out.append(_fingerprint_html(metrics))
        out.append(metric_table(metrics))
        rec = [(p, metrics[f"{p}.recognition.action_acc"]) for p in ("model", "knn")
               if f"{p}.recognition.action_acc" in metrics]
        if rec:
            out.append('<p class="note">recognition of the observed segments (action top-1): '
                       + ", ".join(f"{_e(p)} {v:.3f}" for p, v in rec) + "</p>")
        out.append("<h2>Mean ED@z curves</h2>")
        out.append('<p class="note">colours as in the table; solid: the trained head, dashed: baselines, '
                   "dotted: oracle baselines. ED@z compares the first z forecast actions with the first z true ones.</p>")
        out.append('<div class="charts">' + "".join(ed_curve_svg(metrics, w) for w in CURVE_WHATS) + "</div>")
    else:
        out.append(f'<p class="note" id="no-metrics">split {_e(header.split)} has no labels: no ED table or curves; '
                   "predictions are shown without colouring.</p>")
    out.append(f"<h2>Windows ({len(windows)} shown)</h2>")
    if metrics:
        out.append('<p class="legend"><span class="hit">verb and noun right</span><span class="half">one of them</span>'
                   '<span class="miss">neither</span> at that position; &#9733; the sequence with the lowest action '
                   "edit distance (the one ED@Z counts).</p>")
    out += [window_html(w, taxonomy, i) for i, w in enumerate(windows)]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    version = header.code_version or "unknown"
    out.append(f'<footer>written by <code>lta report</code> (code <span id="code-version">{_e(version)}</span>) '
               f"at {_e(stamp)}</footer></body></html>")
    return "\n".join(out)
