"""Explanations page: galleries per emotion, mean heatmaps, region energies, faithfulness results."""
from __future__ import annotations

import shutil

import duckdb
import pytest

from dashboard import queries
from tests.dashboard.conftest import open_page, read_tables

RUN = "20260101-000000-lightcnn-softlabel-aaaa"


def _open(make_app, store, **params):
    return open_page(make_app, store, "views/explanations.py", **params)


def test_sections_and_tables(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    subheaders = [s.value for s in at.subheader]
    assert subheaders[1:] == ["Mean heatmap per emotion", "Energy per facial region",
                              "Faithfulness and sanity checks"]
    tables = read_tables(at)
    assert any({"emotion", "correct", "mouth", "background"} <= set(t.columns) for t in tables)
    checks = next(t for t in tables if {"check", "baseline", "rule", "result"} <= set(t.columns))
    assert set(checks["emotion"]) == {"all"}  # per emotion only when asked
    assert not at.success and not at.error  # no more green/red boxes: one table and a verdict per method
    assert any(m.value.startswith("**gradcam**: passes") for m in at.markdown)
    at.toggle(key="xm_all").set_value(True).run()
    checks = next(d for d in read_tables(at) if "rule" in d.columns)
    assert len(set(checks["emotion"])) > 1


def test_emotion_selection_changes_galleries(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN, emotion="Fear")
    captions = [c for img in at.image for c in img.captions if "→" in c]
    ref = queries.create_store_ref(fake_store)
    fear = set(queries.load_prediction_page(ref, RUN, queries.ErrorFilters(true_labels=("Fear",), correct="all"),
                                            1000, 0)["image_id"])
    assert captions and all(c.split(" ")[0] in fear for c in captions)
    at.selectbox(key="emotion").set_value("Happiness").run()
    captions2 = [c for img in at.image for c in img.captions if "→" in c]
    assert captions2 and not any(c.split(" ")[0] in fear for c in captions2)
    assert at.query_params["emotion"] == "Happiness"


def test_mean_heatmaps_are_labelled_with_n_of_every_image(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN, xmethod="gradcam")
    mean_captions = [c for img in at.image for c in img.captions if "(n=" in c]
    assert any(", correct (n=" in c for c in mean_captions)
    assert any(", misclassified (n=" in c for c in mean_captions)
    ref = queries.create_store_ref(fake_store)
    for caption in mean_captions:  # gradcam explains every image: each mean is over all of its group
        emotion, rest = caption.split(", ", 1)
        outcome = "correct" if rest.startswith("correct") else "wrong"
        n = int(rest.split("(n=")[1].rstrip(")"))
        assert n == queries.count_predictions(ref, RUN, queries.ErrorFilters(true_labels=(emotion,), correct=outcome))
    assert not any("pipeline explain" in i.value for i in at.info)


@pytest.fixture(params=["older-schema", "summary-rows-missing"])
def outdated_store(request, fake_store, tmp_path):
    """The fake store as a pipeline older than heatmap_summary left it: heatmaps, but no summary of them."""
    db = tmp_path / "outdated.duckdb"
    shutil.copy(fake_store, db)
    con = duckdb.connect(str(db))
    if request.param == "older-schema":  # a version-1 store, never opened by a newer pipeline command
        con.execute("DROP TABLE heatmap_summary")
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    else:  # upgraded since, but this run was explained before
        con.execute("DELETE FROM heatmap_summary WHERE run_id = ?", [RUN])
    con.close()
    return db


def test_heatmaps_without_summary_say_what_to_run(make_app, outdated_store):
    ref = queries.create_store_ref(outdated_store)
    assert queries.load_store_status(ref).state == "ok"  # every other page still shows
    assert queries.load_summary_outdated(ref, RUN, "gradcam")
    at = _open(make_app, outdated_store, run=RUN)
    command = f"python -m pipeline explain --run {RUN} --methods gradcam"
    assert any(command in i.value for i in at.info), [i.value for i in at.info]
    assert not any("(n=" in c for img in at.image for c in img.captions)  # no mean heatmaps pretending
    assert any("→" in c for img in at.image for c in img.captions)  # the galleries read the heatmaps as before
    at.switch_page("views/export.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(f"python -m pipeline explain --run {RUN}" in i.value for i in at.info)
