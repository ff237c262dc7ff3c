"""Error explorer: filters change the gallery, the URL carries them, the detail view shows one image."""
from __future__ import annotations

import pytest

from dashboard import queries, widgets
from tests.dashboard.conftest import open_page, read_tables

RUN = "20260101-000000-lightcnn-softlabel-aaaa"


def _open(make_app, store, **params):
    return open_page(make_app, store, "views/errors.py", **params)


def _count(at) -> int:
    header = next(s.value for s in at.subheader if "images match" in s.value)
    return int(header.split()[0].replace(",", ""))


def _page_number(at) -> int:
    return at.session_state["page"]


def _gallery_captions(at) -> list[str]:
    return [c for img in at.image for c in img.captions if "→" in c]


def test_default_view_shows_misclassified_images(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    captions = _gallery_captions(at)
    assert 0 < len(captions) <= 24
    for c in captions:
        true, pred = c.split(": ", 1)[1].split(" (")[0].split(" → ")
        assert true != pred


def test_filters_change_what_is_shown(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    wrong = _count(at)
    at.radio(key="outcome").set_value("all").run()
    everything = _count(at)
    assert everything == 300 and wrong < everything
    assert at.query_params["outcome"] == "all"
    at.multiselect(key="true").set_value(["Happiness"]).run()
    assert all(": Happiness →" in c for c in _gallery_captions(at))
    happy = _count(at)
    at.multiselect(key="gender").set_value(["female"]).run()
    assert _count(at) < happy
    at.slider(key="conf").set_value((0.9, 1.0)).run()
    assert all(int(c.rsplit("(", 1)[1].split("%")[0]) >= 90 for c in _gallery_captions(at))
    assert not at.exception


def test_failure_tag_and_method_filters(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN)
    wrong = _count(at)
    tag = next(o for o in at.selectbox(key="tag").options if o.startswith("confusion:")).rsplit(" (", 1)[0]
    at.selectbox(key="tag").set_value(tag).run()
    tagged = _count(at)
    assert 0 < tagged < wrong
    at.selectbox(key="tag").set_value("(any)").run()
    at.selectbox(key="method").set_value("gradcam++").run()
    assert 0 < _count(at) < wrong  # the fake store explains a quarter of the images with gradcam++


def test_url_restores_filters_and_pagination(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN, outcome="all", true="Fear", per_page="12", page="2")
    assert at.multiselect(key="true").value == ["Fear"]
    assert at.radio(key="outcome").value == "all"
    assert at.get_by_key("page") is not None and _page_number(at) == 2
    captions = _gallery_captions(at)
    assert 0 < len(captions) <= 12 and all(": Fear →" in c for c in captions)
    ref = queries.create_store_ref(fake_store)
    f = queries.ErrorFilters(true_labels=("Fear",), correct="all")
    second = queries.load_prediction_page(ref, RUN, f, 12, 12)["image_id"].tolist()
    assert [c.split(":")[0] for c in captions] == [widgets.escape_markdown(i) for i in second]  # shown escaped


def test_bad_url_values_fall_back_to_defaults(make_app, fake_store):
    first = make_app(fake_store)
    first.query_params["run"] = "no-such-run"
    first.run()
    # notices show the URL's values escaped (shared links are untrusted): compare without the escapes
    assert any("run=no-such-run" in w.value.replace("\\", "") for w in first.warning)
    at = _open(make_app, fake_store, run="no-such-run", outcome="bogus", true="NotAnEmotion", conf="x-y",
               page="999")
    assert at.radio(key="outcome").value == "wrong"
    assert at.multiselect(key="true").value == []
    assert _page_number(at) == 1
    assert at.selectbox(key="run").value == "20260102-000000-resnet50-transfer-bbbb"  # the newest
    notices = " ".join(w.value for w in at.warning).replace("\\", "")
    for shown in ("outcome=bogus", "true=NotAnEmotion", "conf=x-y", "page=999"):
        assert shown in notices, (shown, notices)


def test_valid_url_values_give_no_notice(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN, outcome="all", true="Fear", page="2")
    assert not any("Ignored from the URL" in w.value for w in at.warning)


def test_detail_view_and_missing_images(make_app, fake_store):
    ref = queries.create_store_ref(fake_store)
    last = queries.load_prediction_page(ref, RUN, queries.ErrorFilters(correct="all", order="image"), 1, 299)
    missing_id = last["image_id"].iloc[0]  # the fake store leaves the last images without a file
    at = _open(make_app, fake_store, run=RUN, outcome="all", img=missing_id)
    assert at.selectbox(key="img").value == missing_id
    shown = widgets.escape_markdown(missing_id)  # captions show data-derived ids escaped
    assert any(f"{shown} (image file missing)" in c for img in at.image for c in img.captions)
    tables = read_tables(at)
    assert any("source" in t.columns and "gender_conf" in t.columns for t in tables)  # demographics
    assert any("mouth" in t.columns for t in tables)  # region energies
    assert not at.exception


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_opacity_changes_thumbnails(make_app, fake_store, alpha):
    at = _open(make_app, fake_store, run=RUN)
    before = [img.value for img in at.image]
    at.slider(key="alpha").set_value(alpha).run()
    after = [img.value for img in at.image]
    assert before != after


def test_details_button_opens_the_thumbnail_and_all_rows_download(make_app, fake_store):
    at = _open(make_app, fake_store, run=RUN, outcome="all", per_page="12")
    assert at.selectbox(key="img").value is None
    first = _gallery_captions(at)[3].split(":")[0].replace("\\", "")  # captions escape markdown (test\_1)
    at.button(key=f"open-{first}").click().run()
    assert at.selectbox(key="img").value == first
    assert any(c == f"gradcam CAM for predicted: {c.split(': ')[-1]}" for img in at.image for c in img.captions)
    assert all(" · gradcam" in c for c in _gallery_captions(at))  # the caption names the CAM method
    assert any("download holds every filtered row" in e.label for e in at.expander)
    at.session_state["errors-table"] = True                     # open the table
    at.run()
    assert any("the download holds all 300" in c.value for c in at.caption) and at.dataframe
    at.multiselect(key="true").set_value(["Anger"]).run()        # a filter changes the count ...
    assert at.dataframe and any("filtered images are on this page" in c.value for c in at.caption)  # ... it stays open
    everything = queries.load_prediction_page(queries.create_store_ref(fake_store), RUN,
                                              queries.ErrorFilters(correct="all"), None)
    assert len(everything) == 300  # what that download writes, not the 12 of the page
    assert queries.ErrorFilters(true_labels=("Anger",), genders=("female",)).describe() == \
        "test-wrong-true-Anger-gender-female"
