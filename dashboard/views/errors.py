"""Error explorer: filter predictions, browse a paginated gallery with CAM overlays, inspect one image.

The page number and the open image are Streamlit-bound URL parameters (`page`, `img`); a thumbnail's
Details button sets the open image, so a shared URL reopens it.
"""
from __future__ import annotations

import math

import pandas as pd
import streamlit as st

from dashboard import charts, queries, widgets
from pipeline.explain.codec import decode_cam
from pipeline.constants import AGE_GROUPS, FACE_REGIONS, GENDERS, RACES

ANY = "(any)"
COLUMNS = 4
md = widgets.escape_markdown  # every data- or URL-derived string in markdown (captions, write, info)

ctx = widgets.get_page_context()
st.title("Error explorer")

splits = queries.load_run_splits(ctx.ref, ctx.run_id) or ["test"]
methods = queries.load_explainer_methods(ctx.ref, ctx.run_id)
tags = queries.load_failure_tag_counts(ctx.ref, ctx.run_id)

with st.container(border=True):
    c1, c2, c3, c4 = st.columns(4)
    split = widgets.synced_selectbox("Split", splits, key="split", container=c1)
    true_labels = widgets.synced_multiselect("True emotion", ctx.classes, key="true", container=c2)
    pred_labels = widgets.synced_multiselect("Predicted emotion", ctx.classes, key="pred", container=c3)
    outcome = widgets.synced_radio("Outcome", ["wrong", "correct", "all"], key="outcome", default="wrong",
                                   container=c4, format_func=lambda o: {"wrong": "misclassified",
                                                                      "correct": "correct", "all": "all"}[o])
    c5, c6, c7, c8 = st.columns(4)
    demo_disabled = not ctx.source
    genders = widgets.synced_multiselect("Gender", list(GENDERS.values()), key="gender", container=c5)
    races = widgets.synced_multiselect("Race", list(RACES.values()), key="race", container=c6)
    ages = widgets.synced_multiselect("Age group", list(AGE_GROUPS.values()), key="age", container=c7)
    conf = widgets.synced_range("Confidence", key="conf", lo=0.0, hi=1.0, default=(0.0, 1.0), step=0.05,
                                container=c8)
    c9, c10, c11, c12 = st.columns(4)
    tag_options = [ANY, *tags["tag"].tolist()]
    tag_counts = dict(zip(tags["tag"], tags["n"]))
    tag = widgets.synced_selectbox("Failure mode", tag_options, key="tag", container=c9,
                                   format_func=lambda t: t if t == ANY else f"{t} ({tag_counts.get(t, 0)})")
    method = widgets.synced_selectbox("Explanation method", [ANY, *methods], key="method", container=c10,
                                      help="Only images with a CAM of this method; also the overlay's method.")
    alpha = widgets.synced_slider("CAM opacity", key="alpha", lo=0.0, hi=1.0, default=0.5, step=0.05,
                                  container=c11)
    per_page = widgets.synced_selectbox("Per page", [12, 24, 48], key="per_page", default=24, container=c12)
    if demo_disabled and (genders or races or ages):
        st.warning("No demographics stored for this dataset: the gender, race and age filters are ignored.")
    slice_rank = widgets.render_slice_picker(ctx, split)

filters = queries.ErrorFilters(
    split=split, true_labels=tuple(true_labels), pred_labels=tuple(pred_labels), correct=outcome,
    genders=tuple(genders) if ctx.source else (), races=tuple(races) if ctx.source else (),
    ages=tuple(ages) if ctx.source else (), conf_min=float(conf[0]), conf_max=float(conf[1]),
    tag="" if tag == ANY else tag, method="" if method == ANY else method,
    source=ctx.source, fingerprint=ctx.fingerprint, slice_rank=slice_rank)
overlay_method = filters.method or (methods[0] if methods else "")
if not methods:
    st.caption(widgets.describe_missing_heatmaps(ctx.run))

total = queries.count_predictions(ctx.ref, ctx.run_id, filters)
n_pages = max(1, math.ceil(total / per_page))
raw_page = st.query_params.get("page")
if raw_page is not None and not (raw_page.isdigit() and 1 <= int(raw_page) <= n_pages):
    widgets.ignore_url_value("page", "page", [raw_page], f"page 1 (there are {n_pages})")
if st.session_state.get("page", 1) > n_pages:  # fewer pages after a filter change
    st.session_state["page"] = 1
top = st.columns([3, 2], vertical_alignment="bottom")
top[0].subheader(f"{total:,} images match")
with top[1].container(horizontal_alignment="right"):
    page_no = st.pagination(n_pages, key="page", bind="query-params")
page = queries.load_prediction_page(ctx.ref, ctx.run_id, filters, per_page, (page_no - 1) * per_page)

if total == 0:
    st.info("No image matches these filters. Widen them (e.g. outcome 'all', fewer emotions).")
    st.stop()

cams = queries.load_cams(ctx.ref, ctx.run_id, tuple(page["image_id"]), overlay_method) if overlay_method \
    else pd.DataFrame(columns=["image_id", "target", "target_label", "cam_size", "cam"])
cam_of = {(r.image_id, r.target): decode_cam(r.cam, r.cam_size) for r in cams.itertuples()}


def open_detail(image_id: str) -> None:
    st.session_state["img"] = image_id  # the bound detail picker: also puts img= in the URL


method_note = f"{overlay_method} CAM" if overlay_method else "no CAM stored"
st.caption(f"Each thumbnail: the {method_note} for the predicted class, left, and for the true class, right "
           "(the same map when the prediction is correct). Details opens it below. Missing image files show "
           "a grey placeholder.")
rows = page.to_dict("records")
for start in range(0, len(rows), COLUMNS):
    cols = st.columns(COLUMNS)
    for col, r in zip(cols, rows[start:start + COLUMNS]):
        pred_cam = cam_of.get((r["image_id"], "pred"))
        true_cam = cam_of.get((r["image_id"], "true"), pred_cam if r["correct"] else None)
        plain = pred_cam is None and true_cam is None
        shown = "no CAM" if plain else overlay_method
        widgets.render_image(
            col, widgets.create_image_key("thumb", r["path"], pred_cam, true_cam, alpha=alpha),
            lambda path=r["path"], p=pred_cam, t=true_cam, plain=plain: widgets.load_image(path)[0] if plain
            else charts.create_thumbnail(widgets.load_image(path)[0], p, t, alpha=alpha),
            caption=f"{md(r['image_id'])}: {md(r['true_label'])} → {md(r['pred_label'])} "
                    f"({r['confidence']:.0%}) · {md(shown)}")
        col.button("Details", key=f"open-{r['image_id']}", on_click=open_detail, args=(r["image_id"],),
                   icon=":material/zoom_in:", type="tertiary")

# A fixed label: an expander whose label changes (a count in it) closes on the next run.
box = widgets.open_expander("Filtered images as a table (this page here; the download holds every filtered row)",
                            key="errors-table")
if box is not None:
    with box:
        st.caption(f"{len(page):,} of the {total:,} filtered images are on this page; the download holds all {total:,}.")
        view = f"errors-{filters.describe()}"
        st.dataframe(page.drop(columns=["path"]), hide_index=True,
                     column_config={"confidence": st.column_config.NumberColumn(format="%.3f")})
        widgets.render_table_downloads(
            page, view, ctx.run_id, caption=f"Filtered predictions ({filters.describe()})",
            rows=lambda: queries.load_prediction_page(ctx.ref, ctx.run_id, filters, None).drop(columns=["path"]),
            label=f"Download all {total:,} rows")

st.subheader("Detail view")
ids = page["image_id"].tolist()
url_img = st.query_params.get("img")
current = st.session_state.get("img")
for extra in (url_img, current):  # a shared link's image, or the one opened before paging, stays selectable
    if extra and extra not in ids:
        if len(queries.load_image_detail(ctx.ref, ctx.run_id, extra, ctx.fingerprint)["prediction"]):
            ids.append(extra)
        elif extra == url_img:
            widgets.ignore_url_value("img", "image", [extra], "no image (it is not in this run)")
image_id = st.selectbox("Image", ids, key="img", index=None, bind="query-params",
                        placeholder="Click Details under a thumbnail, or pick an image id")
if image_id is None:
    st.caption("No image open.")
    st.stop()
detail = queries.load_image_detail(ctx.ref, ctx.run_id, image_id, ctx.fingerprint)
pred = detail["prediction"]
if not len(pred):
    st.info(f"No prediction for image {md(image_id)} in this run.")
    st.stop()
p = pred.iloc[0]
path = detail["image"]["path"].iloc[0] if len(detail["image"]) else None
big, found = widgets.load_image(path, size=200)
dcams = queries.load_cams(ctx.ref, ctx.run_id, (image_id,), overlay_method) if overlay_method else cams.iloc[0:0]
dcam = {r.target: decode_cam(r.cam, r.cam_size) for r in dcams.itertuples()}
a, b, c = st.columns(3)
widgets.render_image(a, widgets.create_image_key("face", path, size=200), lambda: big,
                     caption=md(image_id) + ("" if found else " (image file missing)"))
if "pred" in dcam:
    widgets.render_image(b, widgets.create_image_key("overlay", path, dcam["pred"], size=200, alpha=alpha),
                         lambda: charts.create_overlay(big, dcam["pred"], alpha),
                         caption=f"{overlay_method} CAM for predicted: {md(p['pred_label'])}")
true_cam = dcam.get("true", dcam.get("pred") if p["correct"] else None)
if true_cam is not None:
    widgets.render_image(c, widgets.create_image_key("overlay", path, true_cam, size=200, alpha=alpha),
                         lambda: charts.create_overlay(big, true_cam, alpha),
                         caption=f"{overlay_method} CAM for true: {md(p['true_label'])}")
st.write(f"True **{md(p['true_label'])}**, predicted **{md(p['pred_label'])}** with confidence {p['confidence']:.1%} "
         f"({'correct' if p['correct'] else 'misclassified'}), split {md(p['split'])}.")
left, right = st.columns([2, 3])
with left:
    widgets.render_figure(charts.create_probabilities_chart(ctx.classes, list(p["probs"]), p["true_label"]),
                          f"probabilities-{image_id}", ctx.run_id)
with right:
    if len(detail["tags"]):
        st.write("Failure-mode tags: " + ", ".join(
            md(t) + (f" ({md(m)})" if m else "") for m, t in zip(detail["tags"]["method"], detail["tags"]["tag"])))
st.markdown("**Region energies** (share of CAM energy per facial region)")
energies = detail["energies"].rename(columns={f"e_{r}": r for r in FACE_REGIONS})
widgets.render_table(energies, f"region-energies-{image_id}", ctx.run_id)
st.markdown("**Demographics** (per source; inferred labels are perceived, with the backend's confidence)")
if len(detail["demographics"]):
    widgets.render_table(detail["demographics"], f"demographics-{image_id}", ctx.run_id)
else:
    st.write("None stored for this image.")
