"""Compare runs: two or more runs side by side, per class and per demographic group."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, queries, widgets

ctx = widgets.get_page_context()
st.title("Compare runs")

by_id = {r["run_id"]: r for r in ctx.runs.to_dict("records")}
default = [ctx.run_id] + [rid for rid in by_id if rid != ctx.run_id][:1]
chosen = widgets.synced_multiselect("Runs to compare", list(by_id), key="runs", default=default,
                                    format_func=lambda rid: widgets.describe_run(by_id[rid]))
if len(chosen) < 2:
    st.info("Pick two or more runs.")
    if len(chosen) == 0:
        st.stop()
run_ids = tuple(chosen)
view_id = "+".join(rid.split("-")[-1] for rid in run_ids)

headline = pd.DataFrame([{k: by_id[r][k] for k in ("run_id", "dataset", "recipe", "model", "test_accuracy",
                                                    "test_macro_f1", "n_test")} for r in run_ids])
widgets.render_table(headline, f"compare-headline-{view_id}", ctx.run_id, caption="Runs compared")

c1, c2 = st.columns(2)
split = widgets.synced_selectbox("Split", ["test", "val"], key="split", container=c1)
metric = widgets.synced_selectbox("Per-class metric", ["f1", "recall", "precision"], key="cmetric", container=c2)

st.subheader(f"Per class: {metric}")
cm = queries.load_compare_class_metrics(ctx.ref, run_ids, split)
per_class = cm[~cm["label"].isin(["macro avg", "weighted avg", "accuracy"])]
if len(per_class):
    order = [c for c in (ctx.classes + sorted(set(per_class["label"]) - set(ctx.classes)))
             if c in set(per_class["label"])]
    widgets.render_figure(charts.create_compare_chart(per_class, "label", metric, f"{metric} per class",
                                                      sort=order), f"compare-class-{metric}-{view_id}",
                          ctx.run_id)
    pivot = per_class.pivot_table(index="label", columns="run_id", values=metric).reindex(order).reset_index()
    widgets.render_table(pivot, f"compare-class-{metric}-{view_id}-table", ctx.run_id,
                         caption=f"{metric} per class, runs side by side ({split})")
else:
    st.write(f"No per-class metrics on split {split} for these runs.")

st.subheader("Per group: accuracy")
if ctx.source:
    groups = queries.load_compare_groups(ctx.ref, run_ids, ctx.source, split)
    if len(groups):
        groups = groups.assign(group=groups["attribute"] + ": " + groups["grp"])
        widgets.render_figure(charts.create_compare_chart(groups, "group", "value", "accuracy per group",
                                                          sort=list(dict.fromkeys(groups["group"]))),
                              f"compare-groups-{view_id}", ctx.run_id)
        order = pd.MultiIndex.from_frame(groups[["attribute", "grp"]].drop_duplicates())
        pivot = groups.pivot_table(index=["attribute", "grp"], columns="run_id", values="value").reindex(order)
        pivot = pivot.reset_index()
        widgets.render_table(pivot, f"compare-groups-{view_id}-table", ctx.run_id,
                             caption=f"Accuracy per group ({ctx.source}, {split})")
        missing = set(run_ids) - set(groups["run_id"])
        if missing:
            st.caption("No audit with this source for: " + ", ".join(sorted(missing)))
    else:
        st.write(f"None of these runs has an audit with source {ctx.source} on {split}.")
else:
    st.write("No demographic source for the selected run's dataset.")
