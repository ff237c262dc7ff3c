"""Compare page: two runs side by side per class and per group."""
from __future__ import annotations

RUNS = ["20260101-000000-lightcnn-softlabel-aaaa", "20260102-000000-resnet50-transfer-bbbb"]


def test_two_runs_side_by_side(make_app, fake_store):
    at = make_app(fake_store).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(at.multiselect(key="runs").value) == sorted(RUNS)
    tables = [d.value for d in at.dataframe]
    per_class = next(t for t in tables if "label" in t.columns)
    assert set(RUNS) <= set(per_class.columns)
    assert per_class.set_index("label").loc["Neutral", RUNS[0]] != per_class.set_index("label").loc["Neutral", RUNS[0]]  # NaN: 6-class run
    per_group = next(t for t in tables if "grp" in t.columns)
    assert set(RUNS) <= set(per_group.columns)


def test_metric_and_run_selection(make_app, fake_store):
    at = make_app(fake_store).run()
    at.switch_page("views/compare.py").run()
    f1 = next(d.value for d in at.dataframe if "label" in d.value.columns)
    at.selectbox(key="cmetric").set_value("recall").run()
    recall = next(d.value for d in at.dataframe if "label" in d.value.columns)
    assert not f1.equals(recall)
    at.multiselect(key="runs").set_value([RUNS[0]]).run()
    assert any("two or more" in i.value for i in at.info)
    assert not at.exception
