"""Counterfactual twins: the run's recall on the same test faces drawn with each skin tone, next to
its recall on the faces as each group drew them, and its predictions with and without the cue."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, queries, widgets
from pipeline.constants import RACES
from pipeline.synth.twins import CUE_VARIANTS, compute_twin_recall

ctx = widgets.get_page_context()
st.title("Counterfactual twins")
st.caption("Each test face of the synthetic set drawn again with one thing changed (`python -m pipeline twins`). "
           "A gap on the twins is the model's own dependence on that thing; a gap between groups that the twins "
           "do not show comes from which images each group drew.")

skin = queries.load_twin_predictions(ctx.ref, ctx.run_id, "skin")
cue = queries.load_twin_predictions(ctx.ref, ctx.run_id, "cue")
if skin.empty and cue.empty:
    if ctx.run.get("is_synthetic"):
        st.info(f"No twins stored for run {ctx.run_id}. Make them with: "
                f"`python -m pipeline twins --run {ctx.run_id}`")
    else:
        st.info("Counterfactual twins exist only for runs trained on the built-in synthetic set.")
    st.stop()

order = [c for c in ctx.classes] + ["(accuracy)"]
tones = [r for r in RACES.values() if r in set(skin["variant"])]
if len(skin):
    st.subheader("Recall per emotion by skin tone")
    twins = compute_twin_recall(skin).reindex([c for c in order if c in set(skin["true_label"]) | {"(accuracy)"}])
    as_drawn = compute_twin_recall(skin[skin["variant"] == skin["drawn_as"]].assign(variant=lambda d: d["drawn_as"]))
    as_drawn = as_drawn.reindex(twins.index)
    c1, c2 = st.columns(2)
    with c1:
        widgets.render_figure(charts.create_twin_recall_chart(twins, tones, "Twins: every face in every tone"),
                              "twins-skin", ctx.run_id)
    drawn_tones = [t for t in tones if t in as_drawn.columns]
    with c2:
        widgets.render_figure(charts.create_twin_recall_chart(as_drawn, drawn_tones,
                                                              "As drawn: each group's own faces"),
                              "twins-as-drawn", ctx.run_id)
    table = twins.rename(columns={t: f"twins: {t}" for t in tones}).join(
        as_drawn[drawn_tones].rename(columns={t: f"as drawn: {t}" for t in drawn_tones}))
    spread = twins[tones].max(axis=1) - twins[tones].min(axis=1)
    table.insert(len(tones), "twins spread", spread)
    widgets.render_table(table.reset_index(names="emotion"), "twins-skin-table", ctx.run_id,
                         caption=f"Recall on {skin['image_id'].nunique()} test faces drawn in every skin tone "
                                 "(twins) and on each group's own faces (as drawn); n = faces per emotion")

if len(cue):
    st.subheader("Predictions with and without the background cue")
    classes = ctx.classes
    probs = np.stack(cue["probs"].to_numpy())
    rows = []
    for variant in CUE_VARIANTS:
        mask = (cue["variant"] == variant).to_numpy()
        predicted = cue.loc[mask, "pred_label"].value_counts(normalize=True)
        rows.append(pd.DataFrame({"variant": variant, "emotion": classes,
                                  "predicted share": [float(predicted.get(c, 0.0)) for c in classes],
                                  "mean probability": probs[mask].mean(0)}))
    shares = pd.concat(rows, ignore_index=True)
    wide = shares.pivot(index="emotion", columns="variant").reindex(classes)
    wide.columns = [f"{m} ({v})" for m, v in wide.columns]
    wide["change of predicted share"] = wide["predicted share (cue)"] - wide["predicted share (no cue)"]
    top = wide["change of predicted share"].idxmax()
    st.markdown(f"On **{cue['image_id'].nunique()}** faces drawn with and without the cue, the cue moves "
                f"predictions most toward **{top}** ({wide.loc[top, 'change of predicted share']:+.1%} of faces).")
    widgets.render_figure(charts.create_grouped_bar_chart(
        shares, x="emotion", value="predicted share", group="variant", title="Predicted emotion, with and without cue",
        sort=classes, group_sort=list(CUE_VARIANTS)), "twins-cue", ctx.run_id)
    widgets.render_table(wide.reset_index(), "twins-cue-table", ctx.run_id,
                         caption="Share of faces predicted as each emotion, and its mean probability, per variant")
