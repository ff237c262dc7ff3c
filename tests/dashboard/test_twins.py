"""Counterfactual twins page: recall by skin tone on twins, from a store the pipeline made."""
from __future__ import annotations

import pytest

from tests.dashboard.conftest import open_page, read_tables


def test_twins_page_shows_recall_by_skin_tone(make_app, pipeline_store):
    from pipeline.store import db as store
    from pipeline.synth.twins import compute_twin_recall

    at = open_page(make_app, pipeline_store, "views/twins.py")
    shown = next(d for d in read_tables(at) if "twins: Caucasian" in d.columns)  # markdown, three decimals
    at.button(key="grid-button-twins-skin-table").click().run()  # the grid holds the exact values
    table = next(d.value for d in at.dataframe if "twins: Caucasian" in d.value.columns)
    assert table.columns.tolist() == shown.columns.tolist() and table["emotion"].tolist() == shown["emotion"].tolist()
    assert (table.drop(columns="emotion") - shown.drop(columns="emotion")).abs().max().max() <= 5e-4
    table = table.set_index("emotion")
    with store.open_store(pipeline_store, read_only=True) as con:
        run_id = store.get_run(con, "latest")["run_id"]
        twins = store.load_frame(con, "twin_predictions", run_id=run_id, kind="skin")
    want = compute_twin_recall(twins)
    for tone in ("Caucasian", "African-American", "Asian"):
        assert table.loc["(accuracy)", f"twins: {tone}"] == pytest.approx(want.loc["(accuracy)", tone])
    own = twins[twins["variant"] == twins["drawn_as"]]
    assert table.loc["(accuracy)", "as drawn: Caucasian"] == pytest.approx(
        own.loc[own["drawn_as"] == "Caucasian", "correct"].mean())


def test_twins_page_without_twins_says_what_to_run(make_app, fake_store):
    synthetic, rafdb = "20260101-000000-lightcnn-softlabel-aaaa", "20260102-000000-resnet50-transfer-bbbb"
    at = open_page(make_app, fake_store, "views/twins.py", run=synthetic)
    assert any(f"python -m pipeline twins --run {synthetic}" in i.value for i in at.info)
    at = open_page(make_app, fake_store, "views/twins.py", run=rafdb)
    assert any("only for runs trained on the built-in synthetic set" in i.value for i in at.info)
