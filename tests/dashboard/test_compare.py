"""Compare page: two runs side by side per class and per group."""
from __future__ import annotations

import pytest

from tests.dashboard.conftest import read_tables

RUNS = ["20260101-000000-lightcnn-softlabel-aaaa", "20260102-000000-resnet50-transfer-bbbb"]


def test_two_runs_side_by_side(make_app, fake_store):
    at = make_app(fake_store).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert sorted(at.multiselect(key="runs").value) == sorted(RUNS)
    tables = read_tables(at)
    per_class = next(t for t in tables if "label" in t.columns)
    assert set(RUNS) <= set(per_class.columns)
    assert per_class.set_index("label").loc["Neutral", RUNS[0]] != per_class.set_index("label").loc["Neutral", RUNS[0]]  # NaN: 6-class run
    per_group = next(t for t in tables if "grp" in t.columns)
    assert set(RUNS) <= set(per_group.columns)


def test_metric_and_run_selection(make_app, fake_store):
    at = make_app(fake_store).run()
    at.switch_page("views/compare.py").run()
    f1 = next(d for d in read_tables(at) if "label" in d.columns)
    at.selectbox(key="cmetric").set_value("recall").run()
    recall = next(d for d in read_tables(at) if "label" in d.columns)
    assert not f1.equals(recall)
    at.multiselect(key="runs").set_value([RUNS[0]]).run()
    assert any("two or more" in i.value for i in at.info)
    assert not at.exception


def test_paired_section_needs_the_same_images(make_app, fake_store):
    at = make_app(fake_store).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("different datasets" in m.value for m in at.markdown)


@pytest.fixture(scope="module")
def two_run_store(demo_store, tmp_path_factory):
    """The demo store plus a second real run (1 epoch, 32 px, group DRO) on the same faces."""
    import shutil

    from pipeline.cli import main

    db = tmp_path_factory.mktemp("paired") / "results.duckdb"
    shutil.copy(demo_store, db)
    data = demo_store.parent / "data"
    assert main(["train", "--dataset", "synthetic", "--root", str(data), "--db", str(db), "--epochs", "1",
                 "--image-size", "32", "--batch-size", "32", "--group-dro", "--quiet", "--device", "cpu"]) == 0
    return db


def test_paired_comparison_of_two_runs_on_the_same_images(make_app, two_run_store):
    from pipeline.fairness.paired import compute_mcnemar
    from pipeline.store import db as store

    at = make_app(two_run_store).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    run_a, run_b = at.selectbox(key="pair_a").value, at.selectbox(key="pair_b").value
    with store.open_store(two_run_store, read_only=True) as con:
        a = store.load_frame(con, "predictions", run_id=run_a).query("split == 'test'").set_index("image_id")
        b = store.load_frame(con, "predictions", run_id=run_b).query("split == 'test'").set_index("image_id")
    want = compute_mcnemar(a["correct"], b.loc[a.index, "correct"])
    text = " ".join(m.value for m in at.markdown)
    assert f"**{len(a)}** test images" in text and f"p = {want['p_value']:.4g}" in text
    # 42 test faces: no group reaches the minimum support of 30 images, and the page says so
    assert not any("change" in d.columns for d in read_tables(at))
    assert "No group has enough images with annotations demographics" in text


def test_seed_spread_of_a_recipe_trained_with_two_seeds(make_app, seed_store):
    from pipeline.store import db as store
    from pipeline.export.tables import format_spread
    from pipeline.train.seeds import compute_seed_spread

    with store.open_store(seed_store, read_only=True) as con:
        want = compute_seed_spread(store.list_runs(con)).iloc[0]
    at = make_app(seed_store).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    spread = next(t for t in read_tables(at) if "macro-F1" in t.columns and "seeds" in t.columns)
    assert len(spread) == 1
    row = spread.iloc[0]
    assert row["seeds"] == 2
    assert row["accuracy"] == format_spread(want["accuracy_mean"], want["accuracy_sd"], want["accuracy_min"],
                                            want["accuracy_max"])
    assert row["macro-F1"] == format_spread(want["macro_f1_mean"], want["macro_f1_sd"], want["macro_f1_min"],
                                            want["macro_f1_max"])
    assert any(f"seeds 0, 1; runs {want['run_ids']}." in c.value for c in at.caption)
    at.switch_page("views/export.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(o.startswith("seed-spread — ") for o in at.selectbox(key="export-table").options)


def test_no_seed_spread_says_how_to_make_one(make_app, fake_store):
    at = make_app(fake_store).run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert not any("macro-F1" in t.columns for t in read_tables(at))
    assert any("two or more seeds" in m.value for m in at.markdown)
