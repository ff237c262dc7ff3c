"""Compare runs: two or more runs side by side, per class and per demographic group."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, queries, widgets
from pipeline.export.tables import compute_seed_spread_table

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

shared = queries.load_compare_shared_images(ctx.ref, run_ids, split)
if len(shared) > 1:
    widgets.render_table(shared, f"compare-shared-{view_id}", ctx.run_id,
                         caption=f"Accuracy on the {split} images every chosen run predicted (n_shared)")
    if (shared["n_shared"] == 0).all():
        st.caption("These runs share no image (different datasets): the per-class figures below are on "
                   "different images.")

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

st.subheader("Paired comparison: did run B close the gaps?")
if len(chosen) >= 2:
    c1, c2 = st.columns(2)
    run_a = widgets.synced_selectbox("Run A (before)", list(run_ids), key="pair_a", container=c1,
                                     format_func=lambda rid: widgets.describe_run(by_id[rid]))
    run_b = widgets.synced_selectbox("Run B (after)", [r for r in run_ids if r != run_a], key="pair_b",
                                     container=c2, format_func=lambda rid: widgets.describe_run(by_id[rid]))
    if by_id[run_a]["dataset_fingerprint"] != by_id[run_b]["dataset_fingerprint"]:
        st.write("These two runs were evaluated on different datasets: a paired comparison needs the same images.")
    else:
        test, changes = queries.compute_paired_comparison(ctx.ref, run_a, run_b, split, ctx.source,
                                                          by_id[run_a]["dataset_fingerprint"])
        if test["n"] == 0:
            st.write(f"The two runs share no {split} images with the same labels.")
        else:
            pair_id = f"{run_a.split('-')[-1]}+{run_b.split('-')[-1]}"
            st.markdown(
                f"On the **{test['n']}** {split} images both runs predicted: accuracy A {test['accuracy_a']:.3f}, "
                f"B {test['accuracy_b']:.3f}; right only by A **{test['only_a']}**, only by B **{test['only_b']}**. "
                f"McNemar's test ({test['method']}): p = {test['p_value']:.4g}.")
            if len(changes):
                widgets.render_figure(charts.create_gap_change_chart(
                    changes, f"Change of each accuracy gap, B - A ({ctx.source}, 95% paired bootstrap)"),
                    f"compare-paired-{pair_id}", ctx.run_id)
                widgets.render_table(changes, f"compare-paired-{pair_id}-table", ctx.run_id,
                                     caption="Gap = rest - group (vs-rest) or best - worst; change < 0: B narrowed "
                                             "it. Intervals are not corrected for the number of gaps.")
            elif ctx.source:
                st.write(f"No group has enough images with {ctx.source} demographics to compare.")
            else:
                st.write("No demographics for this dataset: only the overall comparison is shown.")

st.subheader("Across seeds: how much a recipe's figures move")
spread = queries.load_seed_spread(ctx.ref)
if len(spread):
    widgets.render_table(compute_seed_spread_table(spread), "seed-spread", ctx.run_id,
                         caption="Test accuracy and macro-F1 of each recipe trained with two or more seeds on one "
                                 "dataset: mean ± sample SD (n - 1) and (range) over the seeds")
    for r in spread.itertuples(index=False):
        st.caption(f"{r.recipe} on {r.dataset}: seeds {r.seeds}; runs {r.run_ids}.")
    st.caption("A run's confidence intervals cover its test images, not training randomness: a figure quoted "
               "from one seed can sit anywhere in this range. Replicas share the dataset files and every "
               "setting of the recipe but the seed (which also draws the validation split).")
else:
    st.write("No recipe in this store was trained with two or more seeds on one dataset. Train it again with "
             "`--seed 1`, `--seed 2`, ... (same dataset and options) to see how much its test figures move.")
