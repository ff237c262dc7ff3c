"""Figure builders and image drawing for the dashboard: pure functions, no Streamlit.

Charts are Altair (Vega-Lite) objects so that one spec serves the page and the
static export: vl-convert renders SVG, PNG and PDF without a browser
(`export_chart`). Every builder ends with `_sized`, which sets Vega-Lite's
`pad` autosize: Streamlit otherwise applies `fit`, under which a chart's width
and height include its axis labels and legend, so a chart with long labels or
a bottom legend kept a plot area of a few pixels (the Gaps chart was 40 px
wide, the Compare bars a sliver). Categorical axes are sized by step
(`alt.Step`) and sorted in the natural order of their values (the order the
queries return them in, see `queries.sort_natural`), never alphabetically.
Pages only place what these functions return, and tests read a chart's data
straight from the returned object.

Images: `create_overlay` blends a CAM over a face with a jet colour map (the
same look as pytorch-grad-cam's `show_cam_on_image`; drawn here because
pipeline/overlay.py did not exist when the dashboard needed it); `create_thumbnail` puts
the predicted-class and true-class overlays side by side; a missing image file
becomes a grey placeholder, never an exception.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import pickle
import threading
from collections import OrderedDict
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from pipeline.constants import GROUP_SEPARATOR

# Altair validates every object against the Vega-Lite JSON schema as it is built and again on
# to_dict(): on the Fairness page that was about 1 s of a 1.3 s script run (measured with yappi
# on a 1M-prediction store). The builders here are fixed code that tests/dashboard/test_charts.py
# validates with a plain `to_dict()` (validate=True), so the served pages skip both checks.
alt.utils.schemapi.disable_debug_mode()
_THEME_LOCK = threading.Lock()  # alt.theme is process-global; Streamlit serves sessions in threads


def _fingerprint(value) -> bytes:
    """A content key of a builder argument: frames by their values, index and dtypes."""
    if isinstance(value, pd.DataFrame):
        h = hashlib.blake2b(pickle.dumps((list(value.columns), [str(t) for t in value.dtypes])))
        h.update(pd.util.hash_pandas_object(value, index=True).to_numpy().tobytes())
        return h.digest()
    return pickle.dumps(value)


class Memo:
    """A small thread-safe LRU of built charts and of their page specs.

    Building an Altair chart costs 50-300 ms (shorthand parsing and copies), paid on every
    rerun of a page for the same data; keyed by content, a page seen once redraws at once.
    Callers treat the returned charts as read-only (Altair's methods return copies)."""

    def __init__(self, size: int = 512):
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, build):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = build()
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value


_CHARTS, _SPECS = Memo(), Memo()


def memoized(builder):
    """Cache `builder`'s chart by the content of its arguments (see `Memo`)."""
    @functools.wraps(builder)
    def wrapper(*args, **kwargs):
        try:
            key = (builder.__name__, tuple(_fingerprint(a) for a in args),
                   tuple(sorted((k, _fingerprint(v)) for k, v in kwargs.items())))
        except (TypeError, pickle.PicklingError):
            return builder(*args, **kwargs)
        return _CHARTS.get(key, lambda: builder(*args, **kwargs))
    return wrapper

EXPORT_FORMATS: dict[str, str] = {"svg": "image/svg+xml", "png": "image/png", "pdf": "application/pdf"}
THUMB = 96


# ---------------------------------------------------------------- images


def create_placeholder(size: int = THUMB, text: str = "no image") -> np.ndarray:
    """A grey square with a short note: shown when an image file is missing."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), (205, 205, 205))
    d = ImageDraw.Draw(img)
    d.line((0, 0, size, size), fill=(170, 170, 170), width=2)
    d.line((0, size, size, 0), fill=(170, 170, 170), width=2)
    d.rectangle((4, size // 2 - 8, size - 4, size // 2 + 8), fill=(205, 205, 205))
    d.text((8, size // 2 - 6), text[:14], fill=(60, 60, 60))
    return np.asarray(img)


def load_image_rgb(path: str | None, size: int = THUMB) -> tuple[np.ndarray, bool]:
    """(RGB uint8 size x size, found). A missing or unreadable file, or one whose header claims more
    pixels than Pillow's decompression-bomb limit, gives a placeholder."""
    from PIL import Image

    if not path:
        return create_placeholder(size, "no file"), False
    try:
        with Image.open(Path(path)) as im:
            if im.width * im.height > (Image.MAX_IMAGE_PIXELS or 89_478_485):  # a decompression bomb
                return create_placeholder(size, "image too large"), False
            return np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR)), True
    except (OSError, ValueError, Image.DecompressionBombError):
        return create_placeholder(size, "image missing"), False


def _jet_lut() -> np.ndarray:
    """The classic jet colour map as a 256 x 3 uint8 table (what OpenCV's COLORMAP_JET draws)."""
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return (np.stack([r, g, b], axis=1) * 255).astype(np.uint8)


JET = _jet_lut()


def create_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a CAM in [0, 1] (any square size) over an RGB uint8 image; alpha = CAM opacity.

    numpy + Pillow only: OpenCV's own thread pool made this 50x slower on a
    busy 2-core machine.
    """
    from PIL import Image

    h, w = image.shape[:2]
    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    if cam.shape != (h, w):
        cam = np.asarray(Image.fromarray(cam, mode="F").resize((w, h), Image.BILINEAR))
    heat = JET[np.clip(cam * 255.0, 0, 255).astype(np.uint8)].astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * heat
    return np.clip(out, 0, 255).astype(np.uint8)


def create_thumbnail(image: np.ndarray, cam_pred: np.ndarray | None, cam_true: np.ndarray | None,
                     alpha: float = 0.5, gap: int = 4) -> np.ndarray:
    """Predicted-class overlay | true-class overlay, side by side (the image alone where a CAM is absent)."""
    left = create_overlay(image, cam_pred, alpha) if cam_pred is not None else image
    right = create_overlay(image, cam_true, alpha) if cam_true is not None else image
    spacer = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
    return np.concatenate([left, spacer, right], axis=1)


def create_cam_image(cam: np.ndarray, size: int = THUMB) -> np.ndarray:
    """A CAM alone, colour-mapped (for mean heatmaps)."""
    grey = np.full((size, size, 3), 0, dtype=np.uint8)
    return create_overlay(grey, cam, alpha=1.0)


def encode_jpeg(image: np.ndarray) -> bytes:
    """RGB uint8 pixels as the JPEG (quality 100) `st.image` makes of an RGB array, which it then
    sends as given instead of encoding again."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(out, format="JPEG", quality=100)
    return out.getvalue()


# ---------------------------------------------------------------- charts

LABEL_LIMIT = 0  # Vega's "no limit": group labels such as "female | African-American | Anger" are never cut
GAP_ROWS = 30    # gaps shown in the forest plot before the user asks for all


def _sized(chart):
    """Width and height mean the plot area, as in the exported files (see the module docstring)."""
    return chart.properties(autosize=alt.AutoSizeParams(type="pad", contains="padding"))


def _in_order(values) -> list:
    """The distinct values in the order they first appear (the data's natural order)."""
    return list(dict.fromkeys(values))


@memoized
def create_confusion_chart(confusion: pd.DataFrame, classes: list[str], normalise: bool = True) -> alt.Chart:
    """Confusion heatmap (rows = true, columns = predicted), a click selects a cell ('cell' selection)."""
    df = confusion.copy()
    full = pd.MultiIndex.from_product([classes, classes], names=["true_label", "pred_label"]).to_frame(index=False)
    df = full.merge(df, how="left", on=["true_label", "pred_label"]).fillna({"n": 0})
    df["n"] = df["n"].astype(int)
    totals = df.groupby("true_label")["n"].transform("sum").replace(0, 1)
    df["rate"] = df["n"] / totals
    value = "rate" if normalise else "n"
    cell = alt.selection_point(name="cell", fields=["true_label", "pred_label"], on="click")
    base = alt.Chart(df).encode(
        x=alt.X("pred_label:N", sort=classes, title="predicted"),
        y=alt.Y("true_label:N", sort=classes, title="true"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color(f"{value}:Q", scale=alt.Scale(scheme="blues"), title="share of row" if normalise else "n"),
        opacity=alt.condition(cell, alt.value(1.0), alt.value(0.55)),
        tooltip=["true_label", "pred_label", "n", alt.Tooltip("rate:Q", format=".1%")],
    ).add_params(cell)
    text = base.mark_text(fontSize=11).encode(
        text=alt.Text("n:Q"),
        color=alt.condition(alt.datum.rate > 0.5, alt.value("white"), alt.value("black")),
    )
    return _sized((rect + text).properties(width=alt.Step(56), height=alt.Step(40), title="Confusion matrix"))


@memoized
def create_class_metrics_chart(metrics: pd.DataFrame, classes: list[str] | None = None) -> alt.Chart:
    df = metrics[~metrics["label"].isin(["macro avg", "weighted avg", "accuracy"])]
    long = df.melt(id_vars=["label"], value_vars=["precision", "recall", "f1"], var_name="metric")
    return _sized(alt.Chart(long).mark_bar().encode(
        x=alt.X("label:N", title="emotion", sort=classes or _in_order(long["label"])), xOffset="metric:N",
        y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1])), color="metric:N",
        tooltip=["label", "metric", alt.Tooltip("value:Q", format=".3f")],
    ).properties(width=420, height=260, title="Per-class precision, recall, F1"))


@memoized
def create_training_curves_chart(epochs: pd.DataFrame) -> alt.Chart:
    long = epochs.melt(id_vars=["epoch"], value_vars=["train_loss", "val_loss", "train_acc", "val_acc"],
                       var_name="series").dropna(subset=["value"])
    long["kind"] = np.where(long["series"].str.endswith("loss"), "loss", "accuracy")
    chart = alt.Chart(long).mark_line(point=True).encode(
        x="epoch:Q", y=alt.Y("value:Q", title=None), color="series:N",
        tooltip=["epoch", "series", alt.Tooltip("value:Q", format=".4f")],
    ).properties(width=300, height=220).facet(column=alt.Column("kind:N", title=None)).resolve_scale(y="independent")
    return _sized(chart)


@memoized
def create_class_distribution_chart(dist: pd.DataFrame, classes: list[str]) -> alt.Chart:
    return _sized(alt.Chart(dist).mark_bar().encode(
        x=alt.X("label:N", sort=classes, title="emotion"), y=alt.Y("n:Q", title="images"),
        color=alt.Color("split:N", sort=_in_order(dist["split"])), xOffset=alt.XOffset("split:N", sort=_in_order(dist["split"])),
        tooltip=["split", "label", "n"],
    ).properties(width=420, height=240, title="Class distribution"))


@memoized
def create_probabilities_chart(classes: list[str], probs: list[float], true_label: str) -> alt.Chart:
    df = pd.DataFrame({"emotion": list(classes), "probability": [float(p) for p in probs]})
    df["is_true"] = df["emotion"] == true_label
    return _sized(alt.Chart(df).mark_bar().encode(
        y=alt.Y("emotion:N", sort=list(classes)), x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.condition(alt.datum.is_true, alt.value("#2f6fdf"), alt.value("#9aa6b8")),
        tooltip=["emotion", alt.Tooltip("probability:Q", format=".3f")],
    ).properties(width=320, height=alt.Step(22), title="Class probabilities (blue = true class)"))


@memoized
def create_region_energy_chart(energy: pd.DataFrame, regions: list[str], classes: list[str] | None = None) -> alt.Chart:
    """Mean CAM energy share per region (columns) and emotion (rows, class order), correct | misclassified."""
    long = energy.melt(id_vars=["emotion", "correct", "n"], value_vars=regions, var_name="region",
                       value_name="share")
    long["outcome"] = np.where(long["correct"], "correct", "misclassified")
    return _sized(alt.Chart(long).mark_rect().encode(
        x=alt.X("region:N", sort=regions), y=alt.Y("emotion:N", sort=classes or _in_order(long["emotion"])),
        color=alt.Color("share:Q", scale=alt.Scale(scheme="oranges")),
        tooltip=["emotion", "outcome", "region", alt.Tooltip("share:Q", format=".3f"), "n"],
    ).properties(width=alt.Step(40), height=alt.Step(24)).facet(
        column=alt.Column("outcome:N", title=None, sort=["correct", "misclassified"])))


@memoized
def create_group_metric_chart(cells: pd.DataFrame, title: str, level: str = "95%") -> alt.Chart:
    """Point + CI error bar per group, n in the tooltip and label; low-support groups hollow.
    `level`: the intervals' confidence level, for the axis title."""
    df = cells.copy()
    df["label"] = df["grp"] + " (n=" + df["n"].astype(str) + ")"
    df["support"] = np.where(df["low_support"], "low support", "ok")
    base = alt.Chart(df).encode(y=alt.Y("label:N", title=None, sort=_in_order(df["label"]),
                                        axis=alt.Axis(labelLimit=LABEL_LIMIT)))
    bars = base.mark_errorbar().encode(x=alt.X("ci_low:Q", title=f"value ({level} CI)", scale=alt.Scale(zero=False)),
                                       x2="ci_high:Q")
    points = base.mark_point(filled=True, size=70).encode(
        x="value:Q",
        shape=alt.Shape("support:N", scale=alt.Scale(domain=["ok", "low support"], range=["circle", "triangle"]),
                        legend=alt.Legend(orient="right", title=None)),
        tooltip=["grp", "n", alt.Tooltip("value:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f"),
                 alt.Tooltip("ci_high:Q", format=".3f"), "low_support"],
    )
    return _sized((bars + points).properties(width=520, height=alt.Step(26), title=title))


@memoized
def create_intersection_heatmap(cells: pd.DataFrame, title: str) -> alt.Chart:
    """Groups joined by ' | ' split into row (all but last) × column (last part, the emotion)."""
    df = cells.copy()
    parts = df["grp"].str.rsplit(GROUP_SEPARATOR, n=1)
    df["group"] = parts.str[0]
    df["emotion"] = parts.str[-1]
    df["label"] = df["n"].astype(str) + np.where(df["low_support"], "*", "")
    base = alt.Chart(df).encode(x=alt.X("emotion:N", title="emotion", sort=_in_order(df["emotion"])),
                                y=alt.Y("group:N", title=None, sort=_in_order(df["group"]),
                                        axis=alt.Axis(labelLimit=LABEL_LIMIT)))
    rect = base.mark_rect().encode(
        color=alt.Color("value:Q", scale=alt.Scale(scheme="redyellowgreen", domain=[0, 1]), title="value"),
        tooltip=["group", "emotion", "n", alt.Tooltip("value:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"), "low_support"],
    )
    text = base.mark_text(fontSize=10).encode(text="label:N")
    return _sized((rect + text).properties(width=alt.Step(64), height=alt.Step(24),
                                           title=f"{title} (cell text: n, * = low support)"))


def rank_gaps(gaps: pd.DataFrame) -> pd.DataFrame:
    """Gaps in reading order for a forest plot: significant ones first, then by size (|gap|)."""
    key = gaps.assign(_sig=~gaps["significant"].fillna(False).astype(bool), _size=-gaps["gap"].abs())
    return key.sort_values(["_sig", "_size"], kind="stable").drop(columns=["_sig", "_size"])


@memoized
def create_gap_chart(gaps: pd.DataFrame, title: str | None = None, level: str = "95%",
                     limit: int | None = GAP_ROWS) -> alt.Chart:
    """Forest plot: gap + CI per comparison, significant and largest first (at most `limit` rows,
    None = all), coloured by corrected significance, with a rule at 0."""
    ranked = rank_gaps(gaps)
    shown = ranked if limit is None else ranked.head(limit)
    title = title or (f"Gaps with {level} CI" + (f" ({len(shown)} of {len(gaps)}: significant, then largest)"
                                                 if len(shown) < len(gaps) else ""))
    df = shown.copy()
    df["label"] = df["attribute"] + " · " + df["metric"] + " · " + df["comparison"]
    df["significance"] = np.where(df["significant"].fillna(False), "significant (corrected)", "not significant")
    base = alt.Chart(df).encode(y=alt.Y("label:N", title=None, sort=_in_order(df["label"]),
                                        axis=alt.Axis(labelLimit=LABEL_LIMIT)))
    bars = base.mark_errorbar().encode(x=alt.X("ci_low:Q", title=f"gap ({level} CI)"), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=60).encode(
        x="gap:Q", color=alt.Color("significance:N", scale=alt.Scale(
            domain=["significant (corrected)", "not significant"], range=["#d62728", "#4c78a8"]),
            legend=alt.Legend(orient="top", title=None)),
        tooltip=["attribute", "metric", "comparison", "grp", alt.Tooltip("gap:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f"),
                 alt.Tooltip("p_value:Q", format=".3f"), alt.Tooltip("p_adjusted:Q", format=".3f"), "correction"],
    )
    rule = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 3]).encode(x="x:Q")
    return _sized((bars + points + rule).properties(width=520, height=alt.Step(22), title=title))


@memoized
def create_proxy_chart(agreement: pd.DataFrame, attribute: str) -> alt.Chart:
    df = agreement[agreement["attribute"] == attribute].copy()
    df["share"] = df["n"] / df.groupby(["source", "annotated"])["n"].transform("sum")
    order = _in_order([*df["annotated"], *df["inferred"]])
    base = alt.Chart(df).encode(x=alt.X("inferred:N", sort=order), y=alt.Y("annotated:N", sort=order))
    rect = base.mark_rect().encode(color=alt.Color("share:Q", scale=alt.Scale(scheme="purples", domain=[0, 1])),
                                   tooltip=["source", "annotated", "inferred", "n",
                                            alt.Tooltip("share:Q", format=".1%")])
    text = base.mark_text(fontSize=10).encode(text="n:Q")
    return _sized((rect + text).properties(width=320, height=alt.Step(28),
                                           title=f"{attribute}: annotated vs inferred"))


@memoized
def create_compare_chart(df: pd.DataFrame, x: str, value: str, title: str, sort: list[str] | None = None) -> alt.Chart:
    """Bars per `x` value (in `sort` order, else the data's), one per run side by side; value axis 0..1."""
    runs = _in_order(df["run_id"])
    return _sized(alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:N", sort=sort or _in_order(df[x]), axis=alt.Axis(labelLimit=LABEL_LIMIT, labelAngle=-40)),
        xOffset=alt.XOffset("run_id:N", sort=runs), y=alt.Y(f"{value}:Q", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("run_id:N", sort=runs, legend=alt.Legend(orient="bottom", columns=1, labelLimit=LABEL_LIMIT)),
        tooltip=["run_id", x, alt.Tooltip(f"{value}:Q", format=".3f")],
    ).properties(width=alt.Step(max(56, 16 * len(runs) + 16)), height=240, title=title))


@memoized
def create_explanation_metrics_chart(metrics: pd.DataFrame) -> alt.Chart:
    df = metrics[metrics["emotion"] == "all"].dropna(subset=["value"])
    base = alt.Chart(df).encode(y=alt.Y("metric:N", title=None), yOffset="method:N", color="method:N")
    points = base.mark_point(filled=True).encode(
        x=alt.X("value:Q", title="value (95% CI)"),
        tooltip=["method", "metric", alt.Tooltip("value:Q", format=".3f"), "n", "passed"])
    bars = base.mark_errorbar().encode(x=alt.X("ci_low:Q", title="value (95% CI)"), x2="ci_high:Q")
    return _sized((bars + points).properties(width=420, height=alt.Step(14),
                                             title="Faithfulness and sanity checks (all emotions)"))


# ---------------------------------------------------------------- export


def create_page_spec(chart: alt.TopLevelMixin) -> dict:
    """The Vega-Lite spec a page draws: unvalidated (see the note at the top), without Altair's default
    theme (its fixed 300 px view size), as `st.altair_chart` converts, and each inline dataset already
    encoded as the Arrow IPC bytes `st.vega_lite_chart` would send (it passes bytes through as they are).

    Streamlit otherwise converts every dataset's records to a data frame and then to Arrow on each
    script run: 0.5-0.6 s of the chart pages' runs on a 1M-prediction store. Cached with the spec,
    a fresh page load pays it once per chart."""
    def build():
        from streamlit.dataframe_util import convert_anything_to_arrow_bytes

        with _THEME_LOCK, alt.theme.enable("none"):
            spec = chart.to_dict(validate=False)
        spec["datasets"] = {name: convert_anything_to_arrow_bytes(rows)
                            for name, rows in spec.get("datasets", {}).items()}
        return spec
    # Keyed by the chart object (kept alive beside its spec, so its id is not reused): the
    # memoized builders return the same object for the same data.
    kept, spec = _SPECS.get(id(chart), lambda: (chart, build()))
    return copy.deepcopy(spec) if kept is chart else build()  # a copy: Streamlit may amend what it is given


def export_chart(chart: alt.TopLevelMixin, fmt: str, scale: float = 2.0) -> bytes:
    """Render a chart to SVG, PNG or PDF bytes with vl-convert (no browser needed)."""
    import vl_convert as vlc

    spec = chart.to_dict()
    if fmt == "svg":
        return vlc.vegalite_to_svg(spec).encode("utf-8")
    if fmt == "png":
        return vlc.vegalite_to_png(spec, scale=scale)
    if fmt == "pdf":
        return vlc.vegalite_to_pdf(spec)
    raise ValueError(f"unknown figure format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")


@memoized
def create_reliability_chart(bins: pd.DataFrame, title: str) -> alt.Chart:
    """Reliability diagram: accuracy against mean confidence per bin, one line per group, with
    the diagonal of perfect calibration; point size is the bin's image count."""
    df = bins.copy()
    diagonal = alt.Chart(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).mark_line(
        strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
    lines = alt.Chart(df).mark_line(point=True).encode(
        x=alt.X("confidence:Q", title="mean confidence", scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("accuracy:Q", title="accuracy", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("grp:N", title=None),
        tooltip=["grp", "bin", "n", alt.Tooltip("confidence:Q", format=".3f"), alt.Tooltip("accuracy:Q", format=".3f")])
    sizes = alt.Chart(df).mark_circle(opacity=0.35).encode(x="confidence:Q", y="accuracy:Q", color="grp:N",
                                                             size=alt.Size("n:Q", legend=None))
    return _sized((diagonal + lines + sizes).properties(width=360, height=300, title=title))


@memoized
def create_slice_chart(found: pd.DataFrame, title: str, level: str = "95%") -> alt.Chart:
    """Error rate + CI per slice against its rest's error rate (tick), significant slices filled."""
    df = found.copy()
    df["label"] = "#" + df["rank"].astype(str) + " " + df["definition"] + " (n=" + df["n"].astype(str) + ")"
    df["status"] = np.where(df["significant"].fillna(False).astype(bool), "significant", "not significant")
    base = alt.Chart(df).encode(y=alt.Y("label:N", title=None, sort=None, axis=alt.Axis(labelLimit=360)))
    bars = base.mark_errorbar().encode(x=alt.X("ci_low:Q", title=f"error rate ({level} CI)"), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=70).encode(
        x="error_rate:Q", color=alt.Color("status:N", title=None),
        tooltip=["definition", "n", "n_all", alt.Tooltip("error_rate:Q", format=".3f"),
                 alt.Tooltip("rest_error_rate:Q", format=".3f"), alt.Tooltip("p_adjusted:Q", format=".4f")])
    rest = base.mark_tick(color="gray", thickness=2).encode(x="rest_error_rate:Q")
    return _sized((bars + points + rest).properties(width=360, height=alt.Step(24), title=title))

@memoized
def create_gap_change_chart(changes: pd.DataFrame, title: str) -> alt.Chart:
    """Change of each gap (run B - run A) with its paired-bootstrap interval; < 0 = narrowed."""
    df = changes.copy()
    df["label"] = df["attribute"] + " · " + df["comparison"] + " · " + df["grp"].astype(str)
    df["interval"] = np.where(df["resolved"], "excludes 0", "includes 0")
    base = alt.Chart(df).encode(y=alt.Y("label:N", title=None, sort=None, axis=alt.Axis(labelLimit=260)))
    bars = base.mark_errorbar().encode(x=alt.X("ci_low:Q", title="change of the gap (B - A)"), x2="ci_high:Q")
    points = base.mark_point(filled=True, size=60).encode(
        x="change:Q", color=alt.Color("interval:N"),
        tooltip=["attribute", "comparison", "grp", "n", alt.Tooltip("gap_a:Q", format=".3f"),
                 alt.Tooltip("gap_b:Q", format=".3f"), alt.Tooltip("change:Q", format=".3f"),
                 alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")])
    rule = alt.Chart(pd.DataFrame({"x": [0.0]})).mark_rule(strokeDash=[4, 3]).encode(x="x:Q")
    return _sized((bars + points + rule).properties(width=420, height=alt.Step(20), title=title))


@memoized
def create_grouped_bar_chart(df: pd.DataFrame, *, x: str, value: str, group: str, title: str,
                             sort: list[str] | None = None, group_sort: list[str] | None = None) -> alt.Chart:
    """Bars of `value` per `x`, side by side per `group` (long-form df)."""
    return _sized(alt.Chart(df).mark_bar().encode(
        x=alt.X(f"{x}:N", sort=sort), xOffset=alt.XOffset(f"{group}:N", sort=group_sort), y=alt.Y(f"{value}:Q"),
        color=alt.Color(f"{group}:N", sort=group_sort, legend=alt.Legend(orient="bottom")),
        tooltip=[x, group, alt.Tooltip(f"{value}:Q", format=".3f")],
    ).properties(width=460, height=240, title=title))


@memoized
def create_twin_recall_chart(recall: pd.DataFrame, variants: list[str], title: str) -> alt.Chart:
    """Recall per emotion (x) and variant (colour), from compute_twin_recall's frame."""
    df = recall.drop(columns="n").reset_index(names="emotion").melt(
        id_vars="emotion", value_vars=variants, var_name="variant", value_name="recall")
    return create_grouped_bar_chart(df, x="emotion", value="recall", group="variant", title=title,
                                    sort=list(recall.index), group_sort=variants)
