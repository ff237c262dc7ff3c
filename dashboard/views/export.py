"""Export: every table and figure of the selected run in one place, as CSV/LaTeX/Markdown and SVG/PNG/PDF.

The same downloads sit under each table and figure on the other pages; this
page lists them all for the selected run in two pickers (tables, figures),
building each file only when its button is pressed, and offers the run's paper
kit (pipeline.export.kit) as one zip.
"""
from __future__ import annotations

import streamlit as st

from dashboard import charts, checks, queries, widgets
from pipeline.constants import FACE_REGIONS
from pipeline.export.kit import create_kit_zip
from pipeline.export.tables import compute_seed_spread_table

ctx = widgets.get_page_context()
st.title("Export")
st.caption(f"Files are named <run>__<view>.<ext>; run {ctx.run_id}. Tables: CSV, LaTeX (booktabs), Markdown. "
           "Figures: SVG, PNG, PDF.")
st.download_button(
    "Paper kit (zip)", icon=":material/folder_zip:", mime="application/zip",
    file_name=widgets.create_file_name(ctx.run_id, "paper-kit", "zip"),
    data=lambda: create_kit_zip(ctx.ref.path, ctx.run_id),
    help="Every table (LaTeX, CSV, Markdown), the main figures (PDF, SVG), settings.json and a main.tex that "
         "compiles with pdflatex; the same as `python -m pipeline export --run RUN --kit DIR`.")

tables: dict[str, tuple] = {}
figures: dict[str, object] = {}
ref, rid = ctx.ref, ctx.run_id
tables["runs"] = (ctx.runs.drop(columns=["config"]), "Complete runs in the results store")
for split in queries.load_run_splits(ref, rid):
    m = queries.load_class_metrics(ref, rid, split)
    tables[f"class-metrics-{split}"] = (m, f"Per-class precision, recall, F1 and support ({split})")
    figures[f"class-metrics-chart-{split}"] = charts.create_class_metrics_chart(m, ctx.classes)
    conf = queries.load_confusion(ref, rid, split)
    tables[f"confusion-{split}"] = (conf, f"Confusion counts ({split})")
    figures[f"confusion-{split}"] = charts.create_confusion_chart(conf, ctx.classes)
epochs = queries.load_epochs(ref, rid)
if len(epochs):
    tables["epochs"] = (epochs, "Per-epoch loss, accuracy and learning rate")
    figures["training-curves"] = charts.create_training_curves_chart(epochs)
dist = queries.load_class_distribution(ref, rid)
if len(dist):
    tables["class-distribution-table"] = (dist, "Images per split and emotion")
    figures["class-distribution"] = charts.create_class_distribution_chart(dist, ctx.classes)
outdated = []  # methods whose heatmaps were stored without the summary the region-energy views read
for method in queries.load_explainer_methods(ref, rid):
    energy = queries.load_region_energy(ref, rid, method)
    if len(energy):
        tables[f"region-energy-table-{method}"] = (energy, f"Mean CAM energy per facial region ({method})")
        figures[f"region-energy-{method}"] = charts.create_region_energy_chart(energy, list(FACE_REGIONS),
                                                                               ctx.classes)
    elif queries.load_summary_outdated(ref, rid, method):
        outdated.append(method)
em = queries.load_explanation_metrics(ref, rid)
if len(em):
    tables["explanation-metrics-table"] = (em, "Faithfulness, sanity checks and localisation per method")
    tables["explanation-checks"] = (checks.compute_check_table(em, per_emotion=True),
                                    "Explanation checks per method and emotion (value, baseline, CI, n, pass rule)")
    figures["explanation-metrics"] = charts.create_explanation_metrics_chart(em)
audit = queries.load_audit_sources(ref, rid)
for source, split in audit[["source", "split"]].itertuples(index=False):
    cells = queries.load_audit_cells(ref, rid, source, split)
    settings = queries.load_audit_settings(ref, rid, source, split)
    level = widgets.format_audit_level(settings)
    tables[f"audit-cells-{source}-{split}"] = (cells, f"Audit cells ({source}, {split})")
    acc = cells[cells["metric"] == "accuracy"]
    for attribute in ("gender", "race", "age"):
        part = acc[acc["attribute"] == attribute]
        if len(part):
            figures[f"audit-{attribute}-accuracy-{source}-{split}"] = charts.create_group_metric_chart(
                part, f"accuracy by {attribute}", level)
    for attribute in ("gender×emotion", "race×emotion", "gender×race×emotion"):
        part = acc[acc["attribute"] == attribute]
        if len(part):
            figures[f"audit-{attribute}-accuracy-{source}-{split}"] = charts.create_intersection_heatmap(
                part, f"accuracy: {attribute}")
    gaps = queries.load_audit_gaps(ref, rid, source, split)
    if len(gaps):
        tables[f"audit-gaps-{source}-{split}"] = (gaps, f"Gaps with {level} CI and corrected p ({source}, {split})")
        figures[f"audit-gaps-{source}-{split}"] = charts.create_gap_chart(gaps, level=level)
spread = queries.load_seed_spread(ref)
if len(spread):
    tables["seed-spread"] = (compute_seed_spread_table(spread),
                             "Test accuracy and macro-F1 across seeds per recipe and dataset: mean ± SD (range)")
agreement = queries.load_proxy_agreement(ref, ctx.fingerprint)
if len(agreement):
    tables["proxy-agreement"] = (agreement, "Inferred against annotated labels")
    for attribute in sorted(agreement["attribute"].unique()):
        figures[f"proxy-{attribute}"] = charts.create_proxy_chart(agreement, attribute)

if outdated:
    st.info(f"No region-energy tables or figures for {', '.join(outdated)}: the heatmaps were stored by an "
            f"older version of the pipeline, without the summary these views read. Re-run "
            f"`python -m pipeline explain --run {rid} --methods {','.join(outdated)} --db {ref.path}` to add them.")
# One picker per kind instead of a download menu per file: ~40 menus of three buttons each made this
# the slowest page to draw (bench/bench_browser.py).
st.subheader(f"Tables ({len(tables)})")
view = st.selectbox("Table", list(tables), key="export-table",
                    format_func=lambda v: f"{v} — {tables[v][1]} ({len(tables[v][0]):,} "
                                          f"{'row' if len(tables[v][0]) == 1 else 'rows'})")
if view is not None:
    widgets.render_table_downloads(tables[view][0], view, rid, caption=tables[view][1], label=f"Download {view}",
                                  lazy=False)

st.subheader(f"Figures ({len(figures)})")
fig_view = st.selectbox("Figure", list(figures), key="export-figure")
if fig_view is not None:
    widgets.render_figure_downloads(figures[fig_view], fig_view, rid, lazy=False)
