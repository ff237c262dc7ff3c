"""Performance page: report table, confusion matrix → error explorer, curves, distribution."""
from __future__ import annotations

from dashboard import queries
from tests.dashboard.conftest import open_page, read_tables


def _open(make_app, store, **params):
    return open_page(make_app, store, "views/performance.py", **params)


def test_tables_and_figures_are_present(make_app, app_store):
    at = _open(make_app, app_store)
    ref = queries.create_store_ref(app_store)
    run_id = at.selectbox(key="run").value
    metrics = queries.load_class_metrics(ref, run_id, "test")
    first = read_tables(at)[0]
    assert set(["label", "precision", "recall", "f1", "support"]) <= set(first.columns)
    assert first["label"].tolist() == metrics["label"].tolist()
    assert [s.value for s in at.subheader] == ["Per-class report", "Confusion matrix", "Training curves",
                                               "Class distribution"]
    assert len(at.download_button) == 0  # a download menu draws its buttons once opened
    split = at.radio(key="split").value
    for menu in (f"dlm-class-metrics-{split}", f"dlfm-class-metrics-chart-{split}", "dlfm-training-curves"):
        at.session_state[menu] = True
    at.run()
    assert [b.proto.label for b in at.download_button] == ["CSV", "LaTeX", "Markdown", *["SVG", "PNG", "PDF"] * 2]


def test_confusion_cell_opens_error_explorer_filtered_to_it(make_app, app_store):
    at = _open(make_app, app_store)
    classes = at.selectbox(key="cm_true").options
    true_label, pred_label = classes[0], classes[1]
    at.selectbox(key="cm_true").set_value(true_label)
    at.selectbox(key="cm_pred").set_value(pred_label)
    at.button(key="cm_open").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == ["Error explorer"]
    assert at.multiselect(key="true").value == [true_label]
    assert at.multiselect(key="pred").value == [pred_label]
    header = next(s.value for s in at.subheader if "images match" in s.value)
    ref = queries.create_store_ref(app_store)
    conf = queries.load_confusion(ref, at.selectbox(key="run").value, "test")
    expected = conf[(conf.true_label == true_label) & (conf.pred_label == pred_label)]["n"].sum()
    assert header.startswith(f"{expected:,} images match")


def test_switching_run_changes_the_report(make_app, fake_store):
    at = _open(make_app, fake_store, run="20260101-000000-lightcnn-softlabel-aaaa")
    six = read_tables(at)[0]["label"].tolist()
    at.selectbox(key="run").set_value("20260102-000000-resnet50-transfer-bbbb").run()
    seven = read_tables(at)[0]["label"].tolist()
    assert "Neutral" not in six and "Neutral" in seven


def test_report_is_plain_until_the_grid_is_asked_for(make_app, fake_store):
    at = _open(make_app, fake_store)
    split = at.radio(key="split").value
    plain = read_tables(at)[0]
    assert not at.dataframe  # no grid on first load: its JavaScript is not fetched
    at.button(key=f"grid-button-class-metrics-{split}").click().run()
    grid = next(d.value for d in at.dataframe if "f1" in d.value.columns)
    assert grid["label"].tolist() == plain["label"].tolist()
    assert (grid[["precision", "recall", "f1"]] - plain[["precision", "recall", "f1"]]).abs().max().max() <= 5e-4
    at.button(key=f"grid-button-class-metrics-{split}").click().run()  # "Plain table" swaps back
    assert not any("f1" in d.value.columns for d in at.dataframe)
