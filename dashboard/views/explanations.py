"""Explanations: correct vs misclassified galleries, mean map and region energies per emotion, explanation
checks (with the ones that do not apply to a method or model, and why), agreement of gradient-free maps
with Grad-CAM."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, checks, queries, widgets
from pipeline.explain.checks import AGREEMENT_REFERENCE
from pipeline.explain.codec import INPUT_LAYER, decode_cam
from pipeline.constants import FACE_REGIONS

GALLERY = 8
ERRORS_PAGE = "views/errors.py"

ctx = widgets.get_page_context()
st.title("Explanations")

methods = queries.load_explainer_methods(ctx.ref, ctx.run_id)
if not methods:
    st.info(widgets.describe_missing_heatmaps(ctx.run))
    st.stop()
splits = queries.load_run_splits(ctx.ref, ctx.run_id) or ["test"]
c1, c2, c3, c4 = st.columns(4)
method = widgets.synced_selectbox("Method", methods, key="xmethod", container=c1)
split = widgets.synced_selectbox("Split", splits, key="split", container=c2)
emotion = widgets.synced_selectbox("Emotion", ctx.classes, key="emotion", container=c3)
alpha = widgets.synced_slider("CAM opacity", key="alpha", lo=0.0, hi=1.0, default=0.5, step=0.05, container=c4)
layers = queries.load_heatmap_layers(ctx.ref, ctx.run_id)
if layers.get(method) == INPUT_LAYER:
    st.caption(f"{method} is gradient-free: its map is how much the class probability drops when parts of the "
               "input are hidden (occlusion: a sliding window; RISE: random masks), so it explains any model, "
               "ONNX included.")
elif method in layers:
    st.caption(f"{method} reads the model's gradients at layer {layers[method]}.")

st.subheader(f"{emotion}: correct versus misclassified")
st.caption(f"Most confident first; the {method} map for the predicted class, left, and the true class, right. "
           "Details opens the image in the Error explorer.")
for col, outcome, title in zip(st.columns(2), ("correct", "wrong"), ("Correct", "Misclassified")):
    # No method filter: it would cost a join with every stored CAM; images without a CAM show plain.
    f = queries.ErrorFilters(split=split, true_labels=(emotion,), correct=outcome,
                             source=ctx.source, fingerprint=ctx.fingerprint)
    n = queries.count_predictions(ctx.ref, ctx.run_id, f)
    page = queries.load_prediction_page(ctx.ref, ctx.run_id, f, GALLERY, 0)
    cams = queries.load_cams(ctx.ref, ctx.run_id, tuple(page["image_id"]), method)
    cam_of = {(r.image_id, r.target): decode_cam(r.cam, r.cam_size) for r in cams.itertuples()}
    with col:
        st.markdown(f"**{title}** ({n:,} images)")
        if not len(page):
            st.write("None.")
        for pair in range(0, len(page), 2):
            inner = st.columns(2)
            for icol, r in zip(inner, page.iloc[pair:pair + 2].to_dict("records")):
                pcam = cam_of.get((r["image_id"], "pred"))
                tcam = cam_of.get((r["image_id"], "true"), pcam if r["correct"] else None)
                shown = method if pcam is not None or tcam is not None else "no CAM"
                widgets.render_image(
                    icol, widgets.create_image_key("thumb-pair", r["path"], pcam, tcam, alpha=alpha),
                    lambda path=r["path"], p=pcam, t=tcam: charts.create_thumbnail(widgets.load_image(path)[0], p, t,
                                                                                   alpha),
                    caption=f"{r['image_id']} → {r['pred_label']} ({r['confidence']:.0%}) · {shown}")
                if icol.button("Details", key=f"open-{r['image_id']}", icon=":material/zoom_in:", type="tertiary"):
                    st.switch_page(ERRORS_PAGE, query_params={
                        "run": ctx.run_id, "split": split, "outcome": "all", "true": r["true_label"],
                        "img": r["image_id"]})

st.subheader("Mean heatmap per emotion")
means = queries.load_mean_cams(ctx.ref, ctx.run_id, method, split)
energy = queries.load_region_energy(ctx.ref, ctx.run_id, method, split)
# No summary although the run has this method's heatmaps: explained by a pipeline older than heatmap_summary.
outdated = not len(means) and queries.load_summary_outdated(ctx.ref, ctx.run_id, method)
if outdated:
    st.info(f"The {method} heatmaps of this run were stored by an older version of the pipeline, without the "
            f"per-emotion summary (mean heatmaps and region energies) this page shows. Re-run "
            f"`python -m pipeline explain --run {ctx.run_id} --methods {method} --db {ctx.ref.path}` "
            f"(with the options it was explained with, such as --split or --limit) to store it.")
elif len(means):
    st.caption(f"Mean {method} map for the predicted class over every explained image, correct (top) and "
               "misclassified (bottom).")
    for correct, label in ((True, "correct"), (False, "misclassified")):
        sub = means[means["correct"] == correct].set_index("emotion")
        cols = st.columns(len(ctx.classes))
        for col, emo in zip(cols, ctx.classes):
            if emo in sub.index:
                r = sub.loc[emo]
                cam = r["mean_cam"]
                widgets.render_image(col, widgets.create_image_key("mean", None, cam, size=96),
                                     lambda cam=cam: charts.create_cam_image(cam, 96),
                                     caption=f"{emo}, {label} (n={int(r['n'])})")
            else:
                col.caption(f"{emo}, {label}: none")
else:
    st.write("No heatmaps for this method and split.")

st.subheader("Energy per facial region")
regions = list(FACE_REGIONS)
if outdated:
    st.write("Needs the same re-run of `explain` (see above).")
elif len(energy):
    widgets.render_figure(charts.create_region_energy_chart(energy, regions, ctx.classes),
                          f"region-energy-{method}-{split}", ctx.run_id)
    widgets.render_table(energy, f"region-energy-table-{method}-{split}", ctx.run_id,
                         caption=f"Mean energy share of the map per facial region ({method}, {split})")
else:
    st.write("No region energies stored.")

st.subheader("Faithfulness and sanity checks")
em = queries.load_explanation_metrics(ctx.ref, ctx.run_id)
if len(em):
    for m, verdict in checks.compute_verdicts(em).items():
        st.markdown(f"**{m}**: {verdict}.")
    per_emotion = st.toggle("Per emotion too", value=False, key="xm_all")
    table = checks.compute_check_table(em, per_emotion=per_emotion)
    widgets.render_table(table, "explanation-checks", ctx.run_id,
                         caption="Explanation checks per method (value, baseline, CI, n, pass rule)",
                         column_config={"check": st.column_config.TextColumn(width="medium")})
    st.caption(f"Values over {'every emotion and each one' if per_emotion else 'all emotions'}; CIs are 95% "
               f"bootstrap intervals; a result on fewer than {checks.SMALL_N} images is flagged small n.")
    widgets.render_figure(charts.create_explanation_metrics_chart(em), "explanation-metrics", ctx.run_id)
    box = widgets.open_expander("Every stored metric (faithfulness, localisation and their baselines)",
                                key="explanation-metrics-table")
    if box is not None:
        with box:
            widgets.render_table(em if per_emotion else em[em["emotion"] == "all"], "explanation-metrics-table",
                                 ctx.run_id, caption="Faithfulness, sanity checks and localisation per method",
                                 grid=True)
    for line in widgets.describe_checks_not_run(ctx.run, layers, em):
        st.caption(line)
    agree = em[em["metric"] == f"agree_{AGREEMENT_REFERENCE}_spearman"]
    if len(agree):
        st.subheader("Gradient-free maps against Grad-CAM")
        shown = agree if per_emotion else agree[agree["emotion"] == "all"]
        widgets.render_table(shown[["method", "emotion", "value", "ci_low", "ci_high", "n"]],
                             "explanation-agreement", ctx.run_id,
                             caption="Spearman rank correlation of each image's region energies with Grad-CAM's "
                                     "(predicted class; 1 = the same ranking of facial regions), mean over images")
        st.caption("The action-unit localisation of each method against the uniform and shuffled baselines is in "
                   "the checks table above (synthetic set).")
else:
    st.write("No faithfulness or sanity-check results stored for this run.")
