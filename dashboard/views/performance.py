"""Performance: per-class report, interactive confusion matrix, training curves, class distribution."""
from __future__ import annotations

import streamlit as st

from dashboard import charts, queries, widgets

ERRORS_PAGE = "views/errors.py"

ctx = widgets.get_page_context()
st.title("Performance")

splits = queries.load_run_splits(ctx.ref, ctx.run_id)
if not splits:
    st.info("This run stores no evaluation (no confusion matrix). Run `python -m pipeline evaluate` on it.")
    st.stop()
split = widgets.synced_radio("Split", splits, key="split", default=splits[0])


def open_error_explorer(true_label: str, pred_label: str) -> None:
    st.switch_page(ERRORS_PAGE, query_params={
        "run": ctx.run_id, "split": split, "true": true_label, "pred": pred_label,
        "outcome": "all" if true_label == pred_label else "wrong"})


metrics = queries.load_class_metrics(ctx.ref, ctx.run_id, split)
st.subheader("Per-class report")
left, right = st.columns([3, 2])
with left:
    widgets.render_table(metrics, f"class-metrics-{split}", ctx.run_id,
                         caption=f"Per-class precision, recall, F1 and support ({split})",
                         column_config={c: st.column_config.NumberColumn(format="%.3f")
                                        for c in ("precision", "recall", "f1")})
with right:
    if len(metrics):
        widgets.render_figure(charts.create_class_metrics_chart(metrics, ctx.classes), f"class-metrics-chart-{split}",
                              ctx.run_id)

st.subheader("Confusion matrix")
st.caption("Click a cell to open the error explorer filtered to it.")
normalise = st.toggle("Normalise rows", value=True, key="cm_norm")
confusion = queries.load_confusion(ctx.ref, ctx.run_id, split)
chart = charts.create_confusion_chart(confusion, ctx.classes, normalise=normalise)
event = widgets.render_figure(chart, f"confusion-{split}", ctx.run_id, select=True, key="confusion_chart")
selected = (event or {}).get("selection", {}).get("cell") or []
if selected:
    cell = selected[0]
    if cell.get("true_label") in ctx.classes and cell.get("pred_label") in ctx.classes:
        open_error_explorer(cell["true_label"], cell["pred_label"])

c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
cm_true = c1.selectbox("True emotion", ctx.classes, key="cm_true")
cm_pred = c2.selectbox("Predicted emotion", ctx.classes, key="cm_pred",
                       index=min(1, len(ctx.classes) - 1))
if c3.button("Show these images", key="cm_open"):
    open_error_explorer(cm_true, cm_pred)
if (box := widgets.open_expander("Confusion counts as a table", key="confusion-table")) is not None:
    with box:
        table = confusion.pivot_table(index="true_label", columns="pred_label", values="n", fill_value=0)
        table = table.reindex(index=ctx.classes, columns=ctx.classes, fill_value=0).reset_index()
        widgets.render_table(table, f"confusion-table-{split}", ctx.run_id,
                             caption=f"Confusion matrix ({split}; rows true, columns predicted)", grid=True)

st.subheader("Training curves")
epochs = queries.load_epochs(ctx.ref, ctx.run_id)
if len(epochs):
    widgets.render_figure(charts.create_training_curves_chart(epochs), "training-curves", ctx.run_id)
    if (box := widgets.open_expander("Per-epoch table", key="epochs-table")) is not None:
        with box:
            widgets.render_table(epochs, "epochs", ctx.run_id, caption="Per-epoch loss, accuracy and learning rate",
                                 grid=True)
else:
    st.write("No training epochs stored for this run (an evaluation of another run's model).")

st.subheader("Class distribution")
dist = queries.load_class_distribution(ctx.ref, ctx.run_id)
if len(dist):
    widgets.render_figure(charts.create_class_distribution_chart(dist, ctx.classes), "class-distribution",
                          ctx.run_id)
    widgets.render_table(dist, "class-distribution-table", ctx.run_id, caption="Images per split and emotion")
else:
    st.write("No image list stored for this run.")
