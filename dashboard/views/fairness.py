"""Fairness audit: metrics by group with CIs and n, intersectional heatmaps, gaps, discovered slices
(each one click from the Error explorer filtered to it), calibration by group, proxy agreement.

Each chart's numbers are also a table with downloads, in an expander under it drawn only when opened
(`widgets.open_expander`): with no data grid on first load the page loads no grid JavaScript."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, queries, widgets

ERRORS_PAGE = "views/errors.py"


def render_slices_section(ctx: widgets.RunContext, source: str, split: str, level: str) -> None:
    """Slices the audit's search found, with links to the Error explorer filtered to each."""
    st.subheader("Discovered slices")
    found = queries.load_slices(ctx.ref, ctx.run_id, source, split)
    if not len(found):
        st.write("No slices stored: re-run `python -m pipeline audit` (the search needs groups above the "
                 "minimum support on half of the split).")
        return
    n_sig = int(found["significant"].fillna(False).astype(bool).sum())
    st.caption(f"Cohorts of up to three conditions whose error rate is above the rest of the same emotions' "
               f"images (grey tick). Found on one half of the {split} images, tested once on the other half, "
               f"Holm-corrected over the {len(found)} candidates: {n_sig} significant. n and rates are the "
               f"held-out half's; the link opens all of the slice's images.")
    widgets.render_figure(charts.create_slice_chart(found, f"Slices ({source}, {split})", level),
                          f"slices-{source}-{split}", ctx.run_id)
    for r in found[found["significant"].fillna(False).astype(bool)].head(10).itertuples(index=False):
        st.page_link(ERRORS_PAGE, label=f"#{r.rank} {r.definition}: error {r.error_rate:.1%} against "
                                        f"{r.rest_error_rate:.1%} ({r.n_all} images): open in the Error explorer",
                     query_params={"run": ctx.run_id, "source": source, "split": split, "slice": str(r.rank),
                                   "outcome": "all"})
    widgets.render_table_expander(found, f"slices-{source}-{split}-table", ctx.run_id, key="fairness-slices-table",
                                  label="Slices as a table",
                                  caption=f"Discovered slices ({source}, {split}), error rate with {level} CI")


def render_calibration_section(ctx: widgets.RunContext, source: str, split: str, level: str) -> None:
    """ECE and over-/under-confidence per group before and after temperature scaling, reliability diagrams."""
    st.subheader("Calibration by group")
    cal = queries.load_calibration(ctx.ref, ctx.run_id, source, split)
    if not len(cal):
        st.write("No calibration stored: re-run `python -m pipeline audit`.")
        return
    overall = cal[cal["attribute"] == "all"].set_index("scaling")
    parts = [f"before scaling ECE {overall.loc['none', 'ece']:.3f}"]
    if "temperature" in overall.index:
        parts.append(f"after temperature scaling (T = {overall.loc['temperature', 'temperature']:.2f}, fitted on "
                     f"the val split) {overall.loc['temperature', 'ece']:.3f}")
    st.caption("Expected calibration error, " + "; ".join(parts) + ". gap = mean confidence − accuracy "
               "(> 0 over-confident); gap_vs_rest is tested against the rest of the attribute's images "
               "(Holm over single attributes, Benjamini–Hochberg over intersections).")
    attrs = [a for a in dict.fromkeys(cal["attribute"]) if a != "all"]
    if not attrs:
        return
    attribute = widgets.synced_selectbox("Calibration by", attrs, key="cal_attr", default=attrs[0])
    scalings = list(dict.fromkeys(cal["scaling"]))
    bins = queries.load_calibration_bins(ctx.ref, ctx.run_id, source, split, attribute)
    for scaling in scalings:  # one below the other: side by side their plots were under 300 px wide
        title = "before scaling" if scaling == "none" else "after temperature scaling"
        widgets.render_figure(charts.create_reliability_chart(bins[bins["scaling"] == scaling],
                                                              f"Reliability by {attribute}, {title}"),
                              f"reliability-{attribute}-{scaling}-{source}", ctx.run_id)
    part = cal[cal["attribute"] == attribute]
    widgets.render_table_expander(part, f"calibration-{attribute}-{source}-{split}", ctx.run_id,
                                  key="fairness-calibration-table", label="Calibration as a table",
                                  caption=f"Calibration by {attribute} ({source}, {split}) with {level} bootstrap CIs",
                                  column_config={c: st.column_config.NumberColumn(format="%.3f")
                                                 for c in ("accuracy", "confidence", "gap", "ece", "ece_low",
                                                           "ece_high", "gap_vs_rest", "gap_low", "gap_high")})


ctx = widgets.get_page_context()
st.title("Fairness audit")

sources = queries.load_audit_sources(ctx.ref, ctx.run_id)
if not len(sources):
    st.info("This run has no audit yet. Run `python -m pipeline audit` on it.")
    st.stop()
audit_sources = sorted(sources["source"].unique())
source = ctx.source if ctx.source in audit_sources else audit_sources[0]
if source != ctx.source:
    st.warning(f"No audit for demographic source {ctx.source or '(none)'}; showing {source}.")
splits = sorted(sources[sources["source"] == source]["split"].unique())
c1, c2 = st.columns(2)
split = widgets.synced_selectbox("Split", splits, key="split", container=c1)
cells = queries.load_audit_cells(ctx.ref, ctx.run_id, source, split)
metrics = queries.natural_values("metric", cells["metric"])
metric = widgets.synced_selectbox("Metric", metrics, key="metric", default="accuracy", container=c2)
inferred = bool(ctx.sources.set_index("source")["inferred"].get(source, False)) if len(ctx.sources) else False
settings = queries.load_audit_settings(ctx.ref, ctx.run_id, source, split)
level = widgets.format_audit_level(settings)
st.caption(f"Demographic source: {source}" + (" (inferred, perceived labels)" if inferred else "")
           + f". Error bars are {level} confidence intervals; n is the number of {split} images; low-support "
           "groups are drawn as triangles and their cells marked with *.")
st.caption(widgets.format_audit_settings(settings))

sel = cells[cells["metric"] == metric]
st.subheader(f"{metric} by group")
for attribute in ("gender", "race", "age"):
    part = sel[sel["attribute"] == attribute]
    if len(part):
        widgets.render_figure(charts.create_group_metric_chart(part, f"{metric} by {attribute}", level),
                              f"audit-{attribute}-{metric}-{source}", ctx.run_id)
    else:
        st.write(f"No {attribute} groups.")
single = sel[sel["attribute"].isin(["gender", "race", "age"])]
widgets.render_table_expander(single, f"audit-groups-{metric}-{source}-{split}", ctx.run_id,
                              key="fairness-groups-table", label="Groups as a table",
                              caption=f"{metric} by perceived group ({source}, {split}) with {level} CI")

st.subheader("Intersections with emotion")
inter_attrs = [a for a in ("gender×emotion", "race×emotion", "age×emotion", "gender×race×emotion")
               if a in set(sel["attribute"])]
if inter_attrs:
    attribute = widgets.synced_radio("Intersection", inter_attrs, key="inter", default=inter_attrs[0])
    part = sel[sel["attribute"] == attribute]
    widgets.render_figure(charts.create_intersection_heatmap(part, f"{metric}: {attribute}"),
                          f"audit-{attribute}-{metric}-{source}", ctx.run_id)
    low = int(part["low_support"].sum())
    if low:
        st.caption(f"{low} of {len(part)} cells have low support: read them as anecdotes, not findings.")
    widgets.render_table_expander(part, f"audit-{attribute}-{metric}-{source}-table", ctx.run_id,
                                  key="fairness-intersection-table", label="Cells as a table",
                                  caption=f"{metric} by {attribute} ({source}, {split})")
else:
    st.write("No intersectional cells for this metric.")

st.subheader("Gaps")
gaps = queries.load_audit_gaps(ctx.ref, ctx.run_id, source, split)
if len(gaps):
    g1, g2, g3 = st.columns([2, 2, 1], vertical_alignment="bottom")
    gap_attrs = widgets.synced_multiselect("Attributes", queries.natural_values("attribute", gaps["attribute"]), key="gap_attr",
                                           container=g1, help="None picked: every attribute.")
    gap_metrics = widgets.synced_multiselect("Metrics", queries.natural_values("metric", gaps["metric"]), key="gap_metric",
                                             default=[metric] if metric in set(gaps["metric"]) else [],
                                             container=g2, help="None picked: every metric.")
    show_all = g3.toggle("Show all", key="gap_all", help=f"Off: the {charts.GAP_ROWS} significant and largest.")
    gsel = gaps[(gaps["attribute"].isin(gap_attrs) if gap_attrs else True)
                & (gaps["metric"].isin(gap_metrics) if gap_metrics else True)]
    if len(gsel):
        widgets.render_figure(charts.create_gap_chart(gsel, level=level, limit=None if show_all else charts.GAP_ROWS),
                              f"audit-gaps-{'-'.join(gap_metrics) or 'all'}-{source}", ctx.run_id)
    else:
        st.write("No gaps for these attributes and metrics.")
    corr = ", ".join(sorted(gaps["correction"].dropna().unique())) or "none"
    n_sig = int(gaps["significant"].fillna(False).sum())
    st.caption(f"{n_sig} of {len(gaps)} gaps are significant after correcting the p-values for multiple comparisons "
               f"({corr}) (the primary family, each attribute's accuracy and declared intersections, with Holm; "
               f"the exploratory rest with Benjamini–Hochberg); the chart lists significant gaps first, then the largest.")
    widgets.render_table_expander(charts.rank_gaps(gsel), f"audit-gaps-{'-'.join(gap_metrics) or 'all'}-{source}-{split}",
                                  ctx.run_id, key="fairness-gaps-table", label="Gaps as a table",
                                  caption=f"Gaps with {level} CI and corrected p-values ({source}, {split})")
else:
    st.write("No gaps stored.")

render_slices_section(ctx, source, split, level)
render_calibration_section(ctx, source, split, level)

st.subheader("Inferred versus annotated labels")
agreement = queries.load_proxy_agreement(ctx.ref, ctx.fingerprint)
if len(agreement):
    st.caption("Counts of images per (annotated, inferred) pair; rows are annotated groups. "
               "Low agreement means an audit on inferred labels measures the inferrer as much as the model.")
    attrs = [a for a in ("gender", "race", "age") if a in set(agreement["attribute"])]
    for col, attribute in zip(st.columns(max(1, len(attrs))), attrs):
        with col:
            widgets.render_figure(charts.create_proxy_chart(agreement, attribute), f"proxy-{attribute}",
                                  ctx.run_id)
    agree = agreement.assign(match=agreement["annotated"] == agreement["inferred"])
    summary = (agree.groupby(["source", "attribute"])
               .apply(lambda g: g.loc[g["match"], "n"].sum() / g["n"].sum(), include_groups=False)
               .rename("agreement").reset_index())
    if (box := widgets.open_expander("Agreement as tables", key="fairness-proxy-table")) is not None:
        with box:
            widgets.render_table(summary, "proxy-agreement-summary", ctx.run_id,
                                 caption="Share of images whose inferred label equals the annotation", grid=True)
            widgets.render_table(agreement, "proxy-agreement", ctx.run_id,
                                 caption="Inferred against annotated labels", grid=True)
else:
    st.write("No dataset with both annotations and inferred labels: nothing to compare.")
