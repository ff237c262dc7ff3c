"""Figures for papers: pure functions from stored results to Altair charts, and their PDF/SVG bytes.

Each `create_*_figure` takes the frames the store holds (confusion, class_metrics,
audit_cells, audit_gaps, heatmap_summary rows) and returns an Altair chart sized
for a one-column paper, in natural order (`pipeline.constants`: class order of
emotions, code order of each demographic attribute). `render_figure` turns a
chart into PDF, SVG or PNG with vl-convert, which needs no browser. Nothing here
opens the store or writes files; the paper kit (`pipeline.export.kit`) does.
The dashboard has its own interactive charts; these are the static ones for print.
"""
from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import numpy as np
import pandas as pd

from pipeline.constants import DEMOGRAPHIC_ATTRIBUTES, sort_values
from pipeline.export.tables import format_metric, sort_audit_rows, split_attribute, split_group

FIGURE_FORMATS = ("pdf", "svg", "png")
WIDTH = 320          # px of one panel; a one-column figure is about this wide at 72 dpi
MAX_GAP_ROWS = 30    # the forest plot's rows: significant gaps first, then the largest
# vl-convert draws no text at all in a font it lacks (Helvetica, say): 'sans-serif' is the
# Liberation Sans it bundles, embedded in every PDF.
FONT = "sans-serif"
CAM_CELLS = 16       # mean CAMs are drawn as 16 x 16 cells (the stored 32 x 32 averaged 2 x 2)


def _style(chart: alt.TopLevelMixin) -> alt.TopLevelMixin:
    return (chart.configure(font=FONT).configure_view(stroke=None)
            .configure_axis(labelFontSize=10, titleFontSize=11, labelLimit=0)
            .configure_legend(labelFontSize=10, titleFontSize=11, labelLimit=0)
            .configure_header(labelFontSize=11, titleFontSize=11, labelLimit=0))


def render_figure(chart: alt.TopLevelMixin, fmt: str, scale: float = 2.0) -> bytes:
    """A chart as PDF, SVG or PNG bytes (vl-convert)."""
    import vl_convert as vlc

    spec = chart.to_dict()
    if fmt == "pdf":
        return vlc.vegalite_to_pdf(spec)
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode("utf-8")
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    raise ValueError(f"figure format must be one of {FIGURE_FORMATS}, got {fmt!r}")


def create_confusion_figure(confusion: pd.DataFrame, classes: Sequence[str]) -> alt.TopLevelMixin:
    """Row-normalised confusion matrix (colour: share of the true class), counts written in the cells."""
    classes = list(classes)
    grid = pd.MultiIndex.from_product([classes, classes], names=["true_label", "pred_label"]).to_frame(index=False)
    counts = confusion.groupby(["true_label", "pred_label"], as_index=False)["n"].sum()
    df = grid.merge(counts, how="left").fillna({"n": 0})
    df["n"] = df["n"].astype(int)
    totals = df.groupby("true_label")["n"].transform("sum").replace(0, np.nan)
    df["share"] = (df["n"] / totals).fillna(0.0)
    side = max(160, 34 * len(classes))
    base = alt.Chart(df).encode(
        x=alt.X("pred_label:N", sort=classes, title="predicted", axis=alt.Axis(labelAngle=-40)),
        y=alt.Y("true_label:N", sort=classes, title="true"))
    rect = base.mark_rect().encode(color=alt.Color("share:Q", title="share of true class",
                                                   scale=alt.Scale(scheme="blues", domain=[0, 1])))
    text = base.mark_text(fontSize=10).encode(
        text="n:Q", color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("black")))
    return _style((rect + text).properties(width=side, height=side))


def create_class_metrics_figure(class_metrics: pd.DataFrame, classes: Sequence[str]) -> alt.TopLevelMixin:
    """Precision, recall and F1 per emotion (class order), grouped bars."""
    classes = list(classes)
    part = class_metrics[class_metrics["label"].isin(classes)]
    df = part.melt(id_vars=["label"], value_vars=["precision", "recall", "f1"], var_name="metric")
    df["metric"] = df["metric"].replace({"f1": "F1"})
    return _style(alt.Chart(df).mark_bar().encode(
        x=alt.X("label:N", sort=classes, title=None, axis=alt.Axis(labelAngle=-40)),
        xOffset=alt.XOffset("metric:N", sort=["precision", "recall", "F1"]),
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title="score"),
        color=alt.Color("metric:N", sort=["precision", "recall", "F1"], title=None,
                        scale=alt.Scale(scheme="greys"), legend=alt.Legend(orient="top")),
    ).properties(width=WIDTH, height=180))


def _interval_panel(df: pd.DataFrame, y_sort: list[str], title: str, x_title: str,
                    domain: list[float] | None = None) -> alt.LayerChart:
    scale = alt.Scale(domain=domain) if domain else alt.Scale(zero=False)
    base = alt.Chart(df).encode(y=alt.Y("label:N", sort=y_sort, title=title))
    rule = base.mark_rule().encode(x=alt.X("ci_low:Q", title=x_title, scale=scale), x2="ci_high:Q")
    point = base.mark_point(filled=True, size=40, color="black").encode(x="value:Q")
    return (rule + point).properties(width=WIDTH, height=16 * max(1, len(y_sort)))


def create_group_accuracy_figure(cells: pd.DataFrame, *, level: str = "95%",
                                 attributes: Sequence[str] = DEMOGRAPHIC_ATTRIBUTES) -> alt.TopLevelMixin:
    """Accuracy per group with its CI and n, one panel per attribute (gender, race, age), natural order."""
    acc = cells[(cells["metric"] == "accuracy") & cells["attribute"].isin(attributes)]
    panels = []
    for attribute in attributes:
        part = acc[acc["attribute"] == attribute].copy()
        if part.empty:
            continue
        part["label"] = [f"{g} (n={n}){' †' if low else ''}" for g, n, low in
                         zip(part["grp"], part["n"], part["low_support"])]
        order = [part.set_index("grp")["label"][g] for g in sort_values(attribute, part["grp"])]
        panels.append(_interval_panel(part, order, attribute, f"accuracy [{level} CI]", [0, 1]))
    if not panels:
        raise ValueError("no accuracy cells for any of " + ", ".join(attributes))
    return _style(alt.vconcat(*panels).resolve_scale(x="shared"))


def select_forest_gaps(gaps: pd.DataFrame, max_rows: int = MAX_GAP_ROWS) -> pd.DataFrame:
    """The gaps a forest plot shows: best-worst comparisons, significant ones first, then the largest."""
    part = gaps[gaps["comparison"] == "best-worst"].dropna(subset=["gap"])
    key = part.assign(_sig=part["significant"].fillna(False).astype(bool), _size=part["gap"].abs())
    return key.sort_values(["_sig", "_size"], ascending=[False, False]).head(max_rows).drop(columns=["_sig", "_size"])


def create_gaps_forest_figure(gaps: pd.DataFrame, *, level: str = "95%",
                              max_rows: int = MAX_GAP_ROWS) -> alt.TopLevelMixin:
    """Forest plot of best-worst gaps with their CIs: at most `max_rows`, significant first, then the largest.

    Rows read 'attribute · metric · worst group'; filled marks are significant
    after the audit's correction. Rows are listed in natural order.
    """
    part = sort_audit_rows(select_forest_gaps(gaps, max_rows))
    if part.empty:
        raise ValueError("no best-worst gaps to plot")
    part = part.assign(
        label=[f"{a} · {format_metric(m)} · {' × '.join(split_group(g))}"
               for a, m, g in zip(part["attribute"], part["metric"], part["grp"])],
        value=part["gap"], sig=["significant" if bool(s) else "not significant"
                                for s in part["significant"].fillna(False)])
    order = list(dict.fromkeys(part["label"]))
    base = alt.Chart(part).encode(y=alt.Y("label:N", sort=order, title=None))
    rule = base.mark_rule().encode(x=alt.X("ci_low:Q", title=f"gap (best − worst) [{level} CI]"), x2="ci_high:Q")
    point = base.mark_point(size=45).encode(
        x="value:Q",
        fill=alt.Fill("sig:N", title=None, legend=alt.Legend(orient="top"),
                      scale=alt.Scale(domain=["significant", "not significant"], range=["black", "white"])),
        stroke=alt.value("black"))
    zero = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 3], color="grey").encode(x="x:Q")
    return _style((zero + rule + point).properties(width=WIDTH, height=16 * len(order)))


def create_intersection_heatmap_figure(cells: pd.DataFrame, attribute: str = "gender×race×emotion",
                                       metric: str = "accuracy") -> alt.TopLevelMixin:
    """A demographic × emotion heatmap of `metric` (rows: the demographic parts, columns: emotions).

    Cells under the audit's minimum support are outlined in red; every cell
    states its value.
    """
    parts = split_attribute(attribute)
    if parts[-1] != "emotion" or len(parts) < 2:
        raise ValueError(f"the heatmap needs an attribute ending in ×emotion, got {attribute!r}")
    part = cells[(cells["attribute"] == attribute) & (cells["metric"] == metric)]
    if part.empty:
        raise ValueError(f"no {metric} cells for {attribute}")
    part = sort_audit_rows(part)
    values = [split_group(g) for g in part["grp"]]
    part = part.assign(row=[" × ".join(v[:-1]) for v in values], emotion=[v[-1] for v in values],
                       text=[f"{v:.2f}" if pd.notna(v) else "–" for v in part["value"]],
                       low=part["low_support"].astype(bool))
    # Text ink: black on light and white on dark colours (low support is the red outline).
    part["ink"] = ["black" if pd.notna(v) and v > 0.6 else "white" for v in part["value"]]
    rows = list(dict.fromkeys(part["row"]))
    emotions = sort_values("emotion", set(part["emotion"]))
    base = alt.Chart(part).encode(x=alt.X("emotion:N", sort=emotions, title=None, axis=alt.Axis(labelAngle=-40)),
                                  y=alt.Y("row:N", sort=rows, title=" × ".join(parts[:-1])))
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis", domain=[0, 1])),
        stroke=alt.value("red"), strokeWidth=alt.condition("datum.low", alt.value(1.5), alt.value(0)))
    text = base.mark_text(fontSize=9).encode(text="text:N", color=alt.Color("ink:N", scale=None))
    layered = (rect + text).resolve_scale(color="independent")
    return _style(layered.properties(width=34 * len(emotions), height=18 * len(rows)))


def compute_mean_cams(summary: pd.DataFrame) -> dict[str, np.ndarray]:
    """Per emotion, the mean CAM over every explained image (heatmap_summary's correct and
    misclassified means, weighted by their n). Maps are float32 little-endian bytes as stored."""
    out: dict[str, np.ndarray] = {}
    for emotion, g in summary.groupby("emotion"):
        maps = [np.frombuffer(bytes(b), dtype="<f4").reshape(int(k), int(k))
                for b, k in zip(g["mean_cam"], g["cam_size"])]
        weights = g["n"].to_numpy(dtype=float)
        if weights.sum() > 0:
            out[str(emotion)] = np.tensordot(weights / weights.sum(), np.stack(maps), axes=1)
    return out


def _pool(cam: np.ndarray, cells: int) -> np.ndarray:
    """A square map averaged down to at most cells x cells (sizes that divide evenly; else kept)."""
    k = cam.shape[0]
    if k <= cells or k % cells:
        return cam
    f = k // cells
    return cam.reshape(cells, f, cells, f).mean(axis=(1, 3))


def create_mean_cam_figure(summary: pd.DataFrame, *, method: str) -> alt.TopLevelMixin:
    """The mean CAM per emotion (class order), one small square panel each, on one colour scale [0, 1]."""
    cams = compute_mean_cams(summary)
    if not cams:
        raise ValueError(f"no mean CAMs stored for {method}")
    n_by = summary.groupby("emotion")["n"].sum()
    rows = []
    for emotion, cam in cams.items():
        cam = _pool(cam, CAM_CELLS)
        k = cam.shape[0]
        ys, xs = np.mgrid[0:k, 0:k]
        rows.append(pd.DataFrame({"emotion": f"{emotion} (n={int(n_by[emotion])})", "x": xs.ravel(),
                                  "y": ys.ravel(), "v": cam.ravel().round(3)}))
    df = pd.concat(rows, ignore_index=True)
    order = [f"{e} (n={int(n_by[e])})" for e in sort_values("emotion", cams)]
    hidden = alt.Axis(labels=False, ticks=False, title=None, domain=False)
    return _style(alt.Chart(df).mark_rect().encode(
        x=alt.X("x:O", axis=hidden), y=alt.Y("y:O", axis=hidden),
        color=alt.Color("v:Q", title=f"mean {method}", scale=alt.Scale(scheme="inferno", domain=[0, 1])),
    ).properties(width=90, height=90).facet(
        facet=alt.Facet("emotion:N", sort=order, title=None), columns=min(4, len(order))))

