"""Chart builders and image drawing: data in the figures, overlays, placeholders."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from dashboard import charts


def test_confusion_chart_has_every_cell_and_a_click_selection():
    confusion = pd.DataFrame({"true_label": ["Fear", "Anger"], "pred_label": ["Anger", "Anger"], "n": [3, 4]})
    chart = charts.create_confusion_chart(confusion, ["Fear", "Anger", "Sadness"])
    spec = chart.to_dict()
    data = pd.DataFrame(next(iter(spec["datasets"].values())))
    assert len(data) == 9 and data["n"].sum() == 7
    assert data.loc[(data.true_label == "Fear") & (data.pred_label == "Anger"), "rate"].item() == 1.0
    params = spec.get("params", []) + [p for layer in spec["layer"] for p in layer.get("params", [])]
    assert any(p.get("name") == "cell" and p["select"]["fields"] == ["true_label", "pred_label"] for p in params)


def test_overlay_blends_and_keeps_shape():
    image = np.full((40, 40, 3), 128, np.uint8)
    cam = np.zeros((8, 8), np.float32)
    cam[2:4, 2:4] = 1.0
    none = charts.create_overlay(image, cam, alpha=0.0)
    full = charts.create_overlay(image, cam, alpha=1.0)
    assert none.shape == full.shape == (40, 40, 3)
    assert np.array_equal(none, image)
    assert full[12, 12, 0] > full[12, 12, 2] and full[38, 38, 2] > full[38, 38, 0]  # hot = red, cold = blue
    thumb = charts.create_thumbnail(image, cam, None, alpha=0.5)
    assert thumb.shape == (40, 84, 3)


def test_missing_image_is_a_placeholder(tmp_path):
    img, found = charts.load_image_rgb(str(tmp_path / "gone.jpg"), size=50)
    assert not found and img.shape == (50, 50, 3)
    img, found = charts.load_image_rgb(None)
    assert not found
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    assert not charts.load_image_rgb(str(tmp_path / "bad.jpg"))[1]


def test_intersection_heatmap_marks_low_support():
    cells = pd.DataFrame({"grp": ["female | Fear", "male | Fear"], "n": [4, 50], "value": [0.5, 0.8],
                          "ci_low": [0.2, 0.7], "ci_high": [0.8, 0.9], "low_support": [True, False]})
    data = pd.DataFrame(next(iter(charts.create_intersection_heatmap(cells, "t").to_dict()["datasets"].values())))
    assert data.set_index("group").loc["female", "label"] == "4*"
    assert data.set_index("group").loc["male", "label"] == "50"


def test_interval_charts_name_their_confidence_level():
    import json

    cells = pd.DataFrame({"grp": ["female", "male"], "n": [40, 50], "value": [0.5, 0.8], "ci_low": [0.3, 0.7],
                          "ci_high": [0.7, 0.9], "low_support": [False, False]})
    gaps = pd.DataFrame({"attribute": ["gender"], "metric": ["accuracy"], "comparison": ["best-worst"],
                         "grp": ["female"], "gap": [0.3], "ci_low": [0.1], "ci_high": [0.5], "p_value": [0.01],
                         "p_adjusted": [0.02], "correction": ["holm"], "significant": [True]})
    group = json.dumps(charts.create_group_metric_chart(cells, "accuracy by gender", "90%").to_dict())
    gap = json.dumps(charts.create_gap_chart(gaps, level="99%").to_dict())
    assert "value (90% CI)" in group and "95%" not in group
    assert "Gaps with 99% CI" in gap


def test_builders_are_memoized_by_content_and_page_specs_match_the_validated_spec():
    confusion = pd.DataFrame({"true_label": ["Fear", "Anger"], "pred_label": ["Anger", "Anger"], "n": [3, 4]})
    a = charts.create_confusion_chart(confusion, ["Fear", "Anger"])
    assert charts.create_confusion_chart(confusion.copy(), ["Fear", "Anger"]) is a  # same content, same chart
    changed = confusion.assign(n=[3, 5])
    assert charts.create_confusion_chart(changed, ["Fear", "Anger"]) is not a
    assert charts.create_confusion_chart(confusion, ["Fear", "Anger"], normalise=False) is not a
    page = charts.create_page_spec(a)
    full = a.to_dict()  # validated against the Vega-Lite schema
    assert page["layer"] == full["layer"] and set(page["datasets"]) == set(full["datasets"])
    for name, rows in full["datasets"].items():  # each dataset sent as Arrow bytes holding the same rows
        sent = pa.ipc.open_stream(page["datasets"][name]).read_all().to_pandas()
        pd.testing.assert_frame_equal(sent, pd.DataFrame(rows))
    page["layer"].clear()  # a page's copy may be amended without touching the cached one
    assert charts.create_page_spec(a)["layer"] == full["layer"]
