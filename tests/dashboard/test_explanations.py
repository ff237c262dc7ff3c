"""Explanations page: galleries per emotion, mean heatmaps, region energies, faithfulness results."""
from __future__ import annotations

from dashboard import queries

RUN = "20260101-000000-lightcnn-softlabel-aaaa"


def _open(make_app, store, **params):
    at = make_app(store)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("views/explanations.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_sections_and_tables(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    subheaders = [s.value for s in at.subheader]
    assert subheaders[1:] == ["Mean heatmap per emotion", "Energy per facial region",
                              "Faithfulness and sanity checks"]
    tables = [d.value for d in at.dataframe]
    assert any({"emotion", "correct", "mouth", "background"} <= set(t.columns) for t in tables)
    assert any({"method", "metric", "value", "passed"} <= set(t.columns) for t in tables)
    assert any("passed" in s.value for s in at.success) and any("FAILED" in e.value for e in at.error)


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


def test_mean_heatmaps_are_labelled_with_n(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    mean_captions = [c for img in at.image for c in img.captions if "(n=" in c]
    assert any(", correct (n=" in c for c in mean_captions)
    assert any(", misclassified (n=" in c for c in mean_captions)
