"""Shared widgets: the run and demographic-source pickers, URL-synced filters, tables and figures with downloads.

URL state: widgets that live on one page and need nothing more (the Error
explorer's page number and detail image) use Streamlit's own
`bind="query-params"`. Two needs it does not meet keep the hand-built sync
below: the run must stay in the URL even when it is the newest (a bound
widget drops its default from the URL, so a bookmark would drift to newer
runs), and filters shared by several pages (split, opacity, ...) must
survive moving between pages (a bound page widget loses its value on a page
switch, measured in chromium with Streamlit 1.67). Every synced widget takes its first value from `st.query_params`
when the URL holds a value this session did not write (a bookmarked or
shared link, a reload, a jump from another page), else keeps its current
state, else the value it last had in this session (so filters survive moving
between pages, which clears the URL), else its default; after drawing, its
value is written back to the URL. A user's change is never overwritten by the
URL value the session itself wrote before. A URL value that does not apply
(an unknown run or filter value) is not dropped silently: `ignore_url_value`
records a notice that the entry script shows at the top of the page.

No raw HTML is ever written: all text goes through Streamlit's escaped
elements. Strings that come from the data or the URL (image ids from file
names, paths, query parameters) go through `escape_markdown` wherever Streamlit
renders markdown (captions, st.write/markdown/info), so they show as typed:
no links, emphasis, LaTeX, icons, or reversed text.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, queries
from pipeline.fairness.audit import compute_wilson_interval

# Markdown's ASCII punctuation that Streamlit's renderer acts on (links, emphasis, code, LaTeX `$`,
# `:icon:`/`:colour[...]` directives, HTML-like `<`), each escaped with a backslash.
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|~<>$:&=\"'])")
# Characters that reorder or hide text (bidirectional overrides and isolates, marks), shown by code point.
_BIDI_CONTROLS = re.compile("[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

KEEP = "_keep_"  # session-state prefix of the remembered value of a synced widget
PUBLISHED = "_url_"  # session-state prefix of what this session last wrote to the URL for it


def escape_markdown(value: Any) -> str:
    """`value` as text that Streamlit's markdown shows literally: specials backslash-escaped,
    line breaks as spaces, bidirectional controls (e.g. U+202E) shown as their code point."""
    text = str(value)
    text = _BIDI_CONTROLS.sub(lambda m: f"U+{ord(m.group()):04X}", text)
    text = re.sub(r"[\r\n\t]+", " ", text)
    return _MARKDOWN_SPECIALS.sub(r"\\\1", text)


# ---------------------------------------------------------------- URL-synced widgets


_notices = threading.local()  # URL values ignored in this script run (each session runs in its own thread)


def start_url_notices(container) -> None:
    """Called by the entry script before the page runs: notices go to `container` (the top of the page)."""
    _notices.container = container
    _notices.seen = set()


def ignore_url_value(key: str, label: str, raw: Sequence[str], kept: str) -> None:
    """Say that the URL's `key=raw` was ignored and what is shown instead (once per key and run)."""
    container = getattr(_notices, "container", None)
    seen = getattr(_notices, "seen", set())
    if container is None or key in seen:
        return
    seen.add(key)
    value = ", ".join(raw)
    # escaped, not a code span: a backtick in a shared link would close the span and render what follows
    container.warning(f"Ignored from the URL: {label} {escape_markdown(f'{key}={value}')} does not apply here; "
                      f"showing {escape_markdown(kept)}.",
                      icon=":material/link_off:")


def _seed(key: str, default: Any, decode: Callable[[list[str]], Any], valid: Callable[[Any], bool], *,
          label: str = "", describe: Callable[[Any], str] = str) -> None:
    """Give the widget `key` its value for this run, before it is drawn.

    A URL value this session did not write itself (a shared link, a reload, a
    `st.switch_page(..., query_params=...)`) wins when it is valid (else a
    notice says it was ignored); else the widget's current state; else the
    value it last had on any page; else the default.
    """
    url = st.query_params.get_all(key) if key in st.query_params else None
    if url is not None and url != st.session_state.get(PUBLISHED + key):
        try:
            decoded = decode(url)
        except (ValueError, TypeError, KeyError):
            decoded = None
        if decoded is not None and valid(decoded):
            st.session_state[key] = decoded
            return
        ignore_url_value(key, label or key, url, f"the default ({describe(default)})")
    if key in st.session_state and valid(st.session_state[key]):
        # Re-assert it: after a page switch the widget gets a new identity and would
        # otherwise start from its default instead of the state it had.
        st.session_state[key] = st.session_state[key]
        return
    keep = st.session_state.get(KEEP + key)
    st.session_state[key] = keep if keep is not None and valid(keep) else default


def _publish(key: str, value: Any, default: Any, encode: Callable[[Any], str | list[str]],
             always: bool = False) -> None:
    st.session_state[KEEP + key] = value
    if value == default and not always:
        if key in st.query_params:
            del st.query_params[key]
        st.session_state[PUBLISHED + key] = None
    else:
        encoded = encode(value)
        encoded = encoded if isinstance(encoded, list) else [encoded]
        if st.query_params.get_all(key) != encoded:
            st.query_params[key] = encoded
        st.session_state[PUBLISHED + key] = encoded


def synced_selectbox(label: str, options: Sequence[Any], key: str, default: Any = None, *, container=None,
                     format_func: Callable[[Any], str] = str, help: str | None = None,
                     always_in_url: bool = False) -> Any:
    """A selectbox synced with the URL; `always_in_url` keeps even the default there (the run, so that a
    bookmark keeps pointing at the same run after newer runs arrive)."""
    options = list(options)
    if not options:
        return None
    default = default if default in options else options[0]
    by_text = {str(o): o for o in options}
    _seed(key, default, lambda v: by_text.get(v[-1]), lambda v: v in options, label=label,
          describe=format_func)
    if st.session_state[key] not in options:
        st.session_state[key] = default
    value = (container or st).selectbox(label, options, key=key, format_func=format_func, help=help)
    _publish(key, value, default, str, always=always_in_url)
    return value


def synced_multiselect(label: str, options: Sequence[Any], key: str, default: Sequence[Any] = (), *,
                       container=None, help: str | None = None, format_func: Callable[[Any], str] = str) -> list:
    options = list(options)
    default = [d for d in default if d in options]
    by_text = {str(o): o for o in options}
    url = st.query_params.get_all(key) if key in st.query_params else []
    unknown = [x for x in url if x not in by_text]
    if unknown and url != st.session_state.get(PUBLISHED + key):
        known = [by_text[x] for x in url if x in by_text]
        ignore_url_value(key, label, unknown, ", ".join(map(format_func, known)) if known else "no filter")
    _seed(key, default, lambda v: [by_text[x] for x in v if x in by_text], lambda v: isinstance(v, list))
    st.session_state[key] = [v for v in st.session_state[key] if v in options]
    value = (container or st).multiselect(label, options, key=key, help=help, format_func=format_func)
    _publish(key, value, default, lambda v: [str(x) for x in v])
    return value


def synced_radio(label: str, options: Sequence[str], key: str, default: str, *, container=None,
                 horizontal: bool = True, format_func: Callable[[Any], str] = str) -> str:
    options = list(options)
    _seed(key, default, lambda v: v[-1], lambda v: v in options, label=label, describe=format_func)
    value = (container or st).radio(label, options, key=key, horizontal=horizontal, format_func=format_func)
    _publish(key, value, default, str)
    return value


def synced_range(label: str, key: str, lo: float, hi: float, default: tuple[float, float], step: float, *,
                 container=None) -> tuple[float, float]:
    def decode(v: list[str]) -> tuple[float, float]:
        a, b = (float(x) for x in v[-1].split("-", 1))
        return (a, b)

    def valid(v: Any) -> bool:
        return isinstance(v, tuple) and len(v) == 2 and lo <= v[0] <= v[1] <= hi

    _seed(key, tuple(default), decode, valid, label=label, describe=lambda v: f"{v[0]:g}–{v[1]:g}")
    value = tuple((container or st).slider(label, lo, hi, key=key, step=step))
    _publish(key, value, tuple(default), lambda v: f"{v[0]:g}-{v[1]:g}")
    return value


def synced_slider(label: str, key: str, lo: float, hi: float, default: float, step: float, *,
                  container=None) -> float:
    _seed(key, default, lambda v: float(v[-1]), lambda v: isinstance(v, float) and lo <= v <= hi, label=label,
          describe=lambda v: f"{v:g}")
    value = (container or st).slider(label, lo, hi, key=key, step=step)
    _publish(key, value, default, lambda v: f"{v:g}")
    return value


# ---------------------------------------------------------------- run context


@dataclass
class RunContext:
    ref: queries.StoreRef
    runs: pd.DataFrame          # complete runs
    run: dict                   # the selected run's row
    source: str                 # selected demographic source ('' when the dataset has none)
    sources: pd.DataFrame       # demographic sources of the run's dataset

    @property
    def run_id(self) -> str:
        return self.run["run_id"]

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.run["classes"]]

    @property
    def fingerprint(self) -> str:
        return self.run["dataset_fingerprint"]


def describe_run(run: dict) -> str:
    acc = run.get("test_accuracy")
    acc_text = f", acc {acc:.1%}" if acc is not None and acc == acc else ""
    return f"{run['run_id']} · {run['dataset']} · {run['recipe']}{acc_text}"


def _run_config(run: dict) -> dict:
    import json

    config = run.get("config")
    if isinstance(config, str):
        try:
            return json.loads(config)
        except ValueError:
            return {}
    return config or {}


def describe_missing_heatmaps(run: dict) -> str:
    """Why a run has no heatmaps and what to do: imported predictions have no model to explain."""
    if run.get("kind") == "predictions":
        source = _run_config(run).get("source_file", "a predictions file")
        return (f"This run holds predictions imported from {source}: there is no model to explain, so it has "
                "no heatmaps. Performance, the error explorer (without overlays) and the fairness audit work as "
                "for any run.")
    card = _run_config(run).get("card") or {}
    methods = " --methods occlusion,rise" if card.get("format") == "onnx" else ""
    return f"This run stores no explanations. Run `python -m pipeline explain --run {run['run_id']}{methods}` on it."


def describe_checks_not_run(run: dict, layers: dict[str, str], metrics: pd.DataFrame) -> list[str]:
    """Which explanation checks a run's methods lack, and why, one line each. `layers`: {method: the
    layer its maps were read at}, 'input' for the gradient-free methods (queries.load_heatmap_layers)."""
    from pipeline.explain.checks import AGREEMENT_REFERENCE, describe_sanity_skip
    from pipeline.explain.codec import INPUT_LAYER

    source = (_run_config(run).get("card") or {}).get("format") or "checkpoint"
    stored = {m: set(metrics.loc[metrics["method"] == m, "metric"]) for m in layers} if len(metrics) else {}
    lines, by_reason = [], {}
    for m, layer in layers.items():
        if "sanity_spearman" not in stored.get(m, ()):
            why = describe_sanity_skip(model_source=source, gradient_free=layer == INPUT_LAYER)
            by_reason.setdefault(why or "not requested (--sanity-samples 0)", []).append(m)
    lines += [f"No randomisation sanity check for {', '.join(ms)}: {why}." for why, ms in by_reason.items()]
    free = [m for m, layer in layers.items() if layer == INPUT_LAYER]
    if free and AGREEMENT_REFERENCE not in layers:
        how = ("the model has no gradients (ONNX)" if source == "onnx" else
               f"explain it with --methods {AGREEMENT_REFERENCE},{','.join(free)} to compare them")
        lines.append(f"No agreement with Grad-CAM for {', '.join(free)}: this run has no Grad-CAM maps; {how}.")
    if stored and not any("gt_energy" in v for v in stored.values()):
        lines.append("No localisation of the action-unit regions: it needs their ground truth, which only the "
                     "synthetic set has.")
    return lines


def describe_headline(run: dict, n_classes: int) -> str:
    """The run's headline numbers as a one-row markdown table, test accuracy with its 95% Wilson interval
    over the test images (`st.metric` has no room for an interval, and its JavaScript alone adds 0.16-0.21x
    to a bare page's fresh load: bench/bench_browser.py --elements)."""
    acc, n, f1 = run.get("test_accuracy"), run.get("n_test"), run.get("test_macro_f1")  # None/NaN: not evaluated
    if pd.isna(acc):
        accuracy = "—"
    elif pd.isna(n) or int(n) == 0:
        accuracy = f"{acc:.1%}"
    else:
        lo, hi = compute_wilson_interval(round(acc * int(n)), int(n))
        accuracy = f"{acc:.1%} [{float(lo):.1%}, {float(hi):.1%}]"
    return ("| Test accuracy [95% CI] | Macro F1 | Test images | Classes |\n|---:|---:|---:|---:|\n"
            f"| {accuracy} | {'—' if pd.isna(f1) else f'{f1:.3f}'} | {'—' if pd.isna(n) else f'{int(n):,}'} "
            f"| {n_classes} |")


def describe_source(row: dict) -> str:
    return f"{row['source']} ({'inferred' if row['inferred'] else 'annotated'}, n={row['n']})"


def render_run_context(ref: queries.StoreRef) -> RunContext:
    """The sidebar run picker and demographic-source picker (both in the URL), drawn once by the entry script.

    The picker shows the whole run id (the sidebar is widened for it); its
    dataset, recipe and accuracy go in the caption under it.
    """
    runs = queries.load_runs(ref)
    by_id = {r["run_id"]: r for r in runs.to_dict("records")}
    run_id = synced_selectbox("Run", list(by_id), key="run", container=st.sidebar,
                              help="Complete runs only, newest first.", always_in_url=True)
    run = by_id[run_id]
    st.sidebar.caption(describe_run(run).split(" · ", 1)[1])
    sources = queries.load_demographic_sources(ref, run["dataset_fingerprint"])
    source = ""
    if len(sources):
        rows = {r["source"]: r for r in sources.to_dict("records")}
        source = synced_selectbox("Demographic source", list(rows), key="source", container=st.sidebar,
                                  format_func=lambda s: describe_source(rows[s]),
                                  help="Dataset annotations, or the backend that inferred perceived labels.")
    else:
        st.sidebar.caption("No demographics stored for this dataset.")
    if run.get("is_synthetic"):
        st.sidebar.info("Built-in synthetic data: numbers describe the generator, not real faces.")
    st.sidebar.caption(f"Store: {escape_markdown(ref.path)}")
    if st.sidebar.button("Refresh", help="Reload the store (new runs appear)."):
        st.rerun()
    return RunContext(ref=ref, runs=runs, run=run, source=source, sources=sources)


# ---------------------------------------------------------------- tables and figures


def create_file_name(run_id: str, view: str, ext: str) -> str:
    """`<run>__<view>.<ext>`, with only safe characters."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", view).strip("-").lower() or "view"
    run = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-") or "run"
    return f"{run}__{slug}.{ext}"


def open_download_menu(label: str, *, key: str, container=None, lazy: bool = True):
    """A download popover: its container, or None while a `lazy` menu is closed (opening it reruns the
    script, which then draws the buttons). A closed popover's buttons are not mounted, but each is still
    sent to and kept by the browser: without its 13 menus of three buttons the Fairness page's fresh
    load was about 0.25x of a bare page's load shorter (bench/bench_browser.py)."""
    box = (container or st).popover(label, icon=":material/download:", key=key,
                                    on_change="rerun" if lazy else "ignore")
    return box if not lazy or box.open else None


def open_expander(label: str, *, key: str):
    """An expander whose body is drawn only while it is open: its container then, else None (opening
    it reruns the script). A collapsed `st.expander` still mounts its body, so a data grid or JSON
    view in one loads that element's JavaScript (the grid's is 1.2 MB) on every fresh page load."""
    box = st.expander(label, key=key, on_change="rerun")
    return box if box.open else None


TABLE_FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("CSV", "text/csv"),
    "tex": ("LaTeX", "application/x-tex"),
    "md": ("Markdown", "text/markdown"),
}


def export_table(df: pd.DataFrame, fmt: str, caption: str | None = None, label: str | None = None) -> bytes:
    from pipeline.export import tables as export

    if fmt == "csv":
        return export.to_csv(df).encode("utf-8")
    if fmt == "tex":
        return export.to_latex(df, caption=caption, label=label).encode("utf-8")
    if fmt == "md":
        return export.to_markdown(df).encode("utf-8")
    raise ValueError(f"unknown table format {fmt!r}; use one of {', '.join(TABLE_FORMATS)}")


def render_table_downloads(df: pd.DataFrame, view: str, run_id: str, *, caption: str | None = None,
                           container=None, rows: Callable[[], pd.DataFrame] | None = None,
                           label: str = "Download table", lazy: bool = True) -> None:
    """CSV / LaTeX / Markdown downloads of `df`, or of what `rows()` returns (built only on a click);
    with `lazy`, the buttons are drawn only while their menu is open (see `open_download_menu`)."""
    box = open_download_menu(label, key=f"dlm-{view}", container=container, lazy=lazy)
    if box is None:
        return
    for fmt, (name, mime) in TABLE_FORMATS.items():
        box.download_button(
            name, data=lambda fmt=fmt: export_table(df if rows is None else rows(), fmt, caption=caption or view,
                                                   label=f"tab:{create_file_name(run_id, view, '')[:-1]}"),
            file_name=create_file_name(run_id, view, fmt), mime=mime, on_click="ignore",
            key=f"dl-{view}-{fmt}")


DECIMALS = "%.3f"  # every fractional number a page shows (values, CIs, shares, p-values)


def create_number_config(df: pd.DataFrame, column_config: dict | None = None) -> dict:
    """`column_config` plus a three-decimal format for every float column it does not configure."""
    config = dict(column_config or {})
    for column in df.columns:
        if column not in config and pd.api.types.is_float_dtype(df[column]):
            config[column] = st.column_config.NumberColumn(format=DECIMALS)
    return config


MARKDOWN_ROWS = 60  # tables up to this many rows are drawn as markdown until the user asks for the grid


def _column_format(config: dict, column: str) -> str | None:
    """The printf format a column's numbers are shown with (`create_number_config`), None for plain text."""
    entry = config.get(column)
    return ((entry.get("type_config") or {}).get("format") or None) if isinstance(entry, dict) else None


def _format_cell(value: Any, fmt: str | None) -> str:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return ""
    if fmt and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        try:
            return fmt % value
        except (TypeError, ValueError):
            pass
    return escape_markdown(value)


def _flip(key: str) -> None:
    st.session_state[key] = not st.session_state.get(key, False)


def create_markdown_table(df: pd.DataFrame, column_config: dict | None = None) -> str:
    """`df` as a GitHub-style markdown table: every header and cell escaped (`escape_markdown`), numbers
    in the format `create_number_config` gives the grid (floats to three decimals), numeric columns
    right-aligned, missing values empty."""
    config = create_number_config(df, column_config)
    formats = {c: _column_format(config, c) for c in df.columns}
    numeric = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(escape_markdown(c) for c in df.columns) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    for row in df.itertuples(index=False, name=None):
        lines.append("| " + " | ".join(_format_cell(v, formats[c]) for v, c in zip(row, df.columns)) + " |")
    return "\n".join(lines)


def render_table(df: pd.DataFrame, view: str, run_id: str, *, caption: str | None = None,
                 height: int | str = "auto", column_config: dict | None = None, grid: bool = False) -> None:
    """A data frame (floats to three decimals) with CSV / LaTeX / Markdown downloads named after the run and view.

    Up to MARKDOWN_ROWS rows it is a markdown table, with a "Sort and search" button that swaps in the
    interactive grid (`st.dataframe`): the grid's JavaScript (31 files, 1.7 MB) made the fresh load of a
    one-line page with one small grid 1.30x that of the bare page (chromium, 5 interleaved loads each,
    2026-12-07), a markdown table 1.06x. `grid` draws the grid at once: for tables in an expander drawn
    only when opened, and for more than MARKDOWN_ROWS rows."""
    forced = grid or len(df) > MARKDOWN_ROWS
    key = f"grid-{view}"
    interactive = forced or st.session_state.get(key, False)
    if interactive:
        st.dataframe(df, hide_index=True, height=height, column_config=create_number_config(df, column_config))
    else:
        st.markdown(create_markdown_table(df, column_config))
    row = st.container(horizontal=True)
    if not forced:
        row.button("Plain table" if interactive else "Sort and search", key=f"grid-button-{view}", type="tertiary",
                   icon=":material/table_rows:" if interactive else ":material/swap_vert:",
                   help=None if interactive else "Show this table as a grid you can sort, search and resize.",
                   on_click=_flip, args=(key,))
    render_table_downloads(df, view, run_id, caption=caption, container=row)


def render_table_expander(df: pd.DataFrame, view: str, run_id: str, *, key: str, label: str,
                          caption: str | None = None, column_config: dict | None = None) -> None:
    """`render_table` inside an expander `label` (stable `key`) that draws it only while open: the
    Fairness page's tables restate its charts' numbers, and a page without a grid on first load does not
    load the grid's JavaScript (see `open_expander`)."""
    if (box := open_expander(label, key=key)) is not None:
        with box:
            render_table(df, view, run_id, caption=caption, column_config=column_config, grid=True)


def format_audit_level(settings: dict | None) -> str:
    """The confidence level of an audit's intervals ('95%' when its settings were not recorded)."""
    from pipeline.export.tables import format_level

    return format_level(settings["config"]["alpha"]) if settings else "95%"


def format_audit_settings(settings: dict | None) -> str:
    """One line saying how an audit was computed (from the `audits` table)."""
    if settings is None:
        return ("Audit settings were not recorded (audited before they were stored); re-run "
                "`python -m pipeline audit` to record them.")
    c = settings["config"]
    corrections = (f"{c['correction']} correction of the primary family (each attribute's accuracy"
                   f"{', ' + ', '.join(c['primary']) if c.get('primary') else ''}), "
                   f"{c['exploratory_correction']} of the exploratory rest" if "exploratory_correction" in c
                   else f"{c['correction']} correction across all gaps")
    return (f"Audit settings: alpha {c['alpha']}, {corrections}, minimum support "
            f"{c['min_support']}, intersections of up to {c['max_order']} demographic attributes (each also crossed "
            f"with emotion), {c['n_boot']} bootstrap "
            f"resamples, {c['n_perm']} permutations, seed {c['seed']}; {settings['n_labelled']} of "
            f"{settings['n_predictions']} predictions labelled by this source.")


def render_figure_downloads(chart, view: str, run_id: str, *, container=None, lazy: bool = True) -> None:
    box = open_download_menu("Download figure", key=f"dlfm-{view}", container=container, lazy=lazy)
    if box is None:
        return
    for fmt, mime in charts.EXPORT_FORMATS.items():
        box.download_button(
            fmt.upper(), data=lambda fmt=fmt: charts.export_chart(chart, fmt),
            file_name=create_file_name(run_id, view, fmt), mime=mime, on_click="ignore",
            key=f"dlf-{view}-{fmt}")


def render_figure(chart, view: str, run_id: str, *, select: bool = False, key: str | None = None,
                  width: str = "content"):
    """An Altair chart with SVG / PNG / PDF downloads; with `select`, returns the selection state.

    width: "content" (default: the builder sizes the chart; stretching squashed layered
    charts in narrow columns) or "stretch" (the page's full width)."""
    spec = charts.create_page_spec(chart)
    if select:
        state = st.vega_lite_chart(spec=spec, on_select="rerun", key=key or f"chart-{view}", width=width)
    else:
        st.vega_lite_chart(spec=spec, width=width)
        state = None
    render_figure_downloads(chart, view, run_id)
    return state


# ---------------------------------------------------------------- images

# Faces, overlays and mean maps as encoded files, by everything their pixels depend on: a page's 16-30
# images were otherwise decoded, blended and JPEG-encoded again on every script run.
_IMAGES = charts.Memo(size=1024)  # up to ~20 MB: a 48-image gallery page at a few opacities


def _file_state(path: str | None) -> tuple:
    try:
        stat = os.stat(path)
    except (OSError, TypeError, ValueError):
        return (path, None)
    return (path, stat.st_mtime_ns, stat.st_size)


def create_image_key(kind: str, path: str | None, *cams: np.ndarray | None, **options) -> tuple:
    """What a drawn image depends on: the file at `path` (path, modification time and size), the content
    of each CAM (None where absent) and the drawing options."""
    digests = tuple(None if c is None else hashlib.blake2b(
        np.ascontiguousarray(c).tobytes() + str((c.dtype, c.shape)).encode(), digest_size=16).digest()
        for c in cams)
    return (kind, _file_state(path), digests, tuple(sorted(options.items())))


def load_image(path: str | None, size: int = charts.THUMB) -> tuple[np.ndarray, bool]:
    """`charts.load_image_rgb`, read once per state of the file (the array is shared: do not write to it)."""
    return _IMAGES.get(create_image_key("file", path, size=size), lambda: charts.load_image_rgb(path, size))


def render_image(container, key: tuple, draw: Callable[[], np.ndarray], *, caption: str,
                 width: str = "stretch") -> None:
    """`container.image` of the pixels `draw()` returns, drawn and encoded once per `key`
    (`create_image_key`); Streamlit sends a JPEG it is given as it is."""
    data = _IMAGES.get(key, lambda: charts.encode_jpeg(draw()))
    container.image(data, caption=caption, width=width, output_format="JPEG")


# ---------------------------------------------------------------- store problems


def render_store_problem(status: queries.StoreStatus, db_path: str) -> None:
    """A page saying what is wrong with the store and what to run: never a traceback."""
    st.title("Facial emotion recognition: results")
    headline = {
        "missing": "No results store yet",
        "empty": "The results store holds no complete run yet",
        "old-schema": "The results store was made by another version of the pipeline",
        "unreadable": "The results store could not be read",
        "damaged": "The results store is damaged",
    }.get(status.state, "The results store cannot be shown")
    st.warning(headline)
    st.write(escape_markdown(status.message))
    st.markdown("**What to run** (from the project root):")
    if status.state == "old-schema":
        st.code(f"mv {db_path} {db_path}.old\npython -m pipeline demo --db {db_path}", language="bash")
    elif status.state == "damaged":
        st.code(f"python -m pipeline runs --db {db_path} --salvage {db_path}.salvaged.duckdb\n"
                f"python -m dashboard --db {db_path}.salvaged.duckdb", language="bash")
    else:
        st.code(f"python -m pipeline demo --db {db_path}", language="bash")
    st.markdown("Then reload this page. To open another store:")
    st.code("python -m dashboard --db PATH/TO/results.duckdb\n"
            "# or: FER_RESULTS_DB=PATH/TO/results.duckdb python -m dashboard", language="bash")
    if st.button("Check again"):
        st.rerun()


def get_page_context() -> RunContext:
    """Every page starts here: the run and source the entry script's sidebar pickers chose for this run."""
    return st.session_state["page_context"]


def render_slice_picker(ctx: RunContext, split: str, *, container=None) -> int:
    """The Error explorer's slice filter (URL key `slice`): a stored slice of the current source, or 0 = any."""
    found = queries.load_slices(ctx.ref, ctx.run_id, ctx.source, split) if ctx.source else None
    if found is None or not len(found):
        return 0
    names = dict(zip(found["rank"].astype(int), found["definition"]))
    return int(synced_selectbox("Slice", [0, *names], key="slice", default=0, container=container,
                                format_func=lambda r: "(any)" if r == 0 else f"#{r} {names[r]}",
                                help="A cohort found by the audit's slice search (Fairness page)."))
