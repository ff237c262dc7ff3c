"""Overview: the complete runs in the store, the selected run's headline numbers and demographic source."""
from __future__ import annotations

import json

import streamlit as st

from dashboard import queries, widgets
from pipeline.export.tables import format_spread
from pipeline.train.seeds import select_spread_of

ctx = widgets.get_page_context()
run = ctx.run

st.title("Overview")
if run["is_synthetic"]:
    st.warning("This run uses the built-in synthetic face dataset: generated faces with a known answer, "
               "for trying the tool out. Its numbers say nothing about real faces.", icon=":material/science:")

st.subheader(f"Run {ctx.run_id}")
st.markdown(widgets.describe_headline(run, len(ctx.classes)))
spread = queries.load_seed_spread(ctx.ref)
for r in select_spread_of(spread, ctx.run_id).itertuples(index=False):
    st.caption(f"This recipe over seeds {r.seeds} on the same data: test accuracy "
               f"{format_spread(r.accuracy_mean, r.accuracy_sd, r.accuracy_min, r.accuracy_max)}, macro-F1 "
               f"{format_spread(r.macro_f1_mean, r.macro_f1_sd, r.macro_f1_min, r.macro_f1_max)} "
               "(mean ± SD (range); Compare runs has every recipe's).")
st.write(f"Dataset **{run['dataset']}** ({run['dataset_root']}), recipe **{run['recipe']}**, "
         f"model {run['model']}, kind {run['kind']}, seed {run['seed']}, device {run['device']}.")
if run.get("parent_run_id"):
    st.write(f"Evaluates the model of run {run['parent_run_id']}.")

st.subheader("Demographic source in use")
if ctx.source:
    row = ctx.sources[ctx.sources["source"] == ctx.source].iloc[0]
    if row["inferred"]:
        st.write(f"**{ctx.source}**: perceived labels inferred by a model, not self-reported identity. "
                 "Check them against annotations (Fairness audit → proxy agreement) before trusting a gap.")
    else:
        st.write(f"**{ctx.source}**: the dataset's own annotations.")
    st.caption("Change it in the sidebar; every page's subgroup filters and the audit use it.")
    widgets.render_table(ctx.sources, "demographic-sources", ctx.run_id)
else:
    st.write("No demographics stored for this dataset: subgroup filters and the audit are unavailable.")

st.subheader("Runs in the store")
cols = ["run_id", "kind", "dataset", "is_synthetic", "recipe", "model", "test_accuracy", "test_macro_f1",
        "n_test", "seed", "started_at", "train_seconds"]
runs_table = ctx.runs[cols]
if ctx.runs["is_synthetic"].any():
    st.caption("Runs on the built-in synthetic data are marked is_synthetic.")
widgets.render_table(runs_table, "runs", ctx.run_id, caption="Complete runs in the results store")

if (box := widgets.open_expander("Configuration of the selected run", key="overview-config")) is not None:
    with box:
        try:
            st.json(json.loads(run["config"]))
        except (TypeError, ValueError):
            st.code(str(run["config"]))
