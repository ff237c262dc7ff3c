"""Figures for print: natural order, the forest plot's choice of gaps, exact mean CAMs.

Their files (PDF with embedded fonts, SVG) are checked through the kit in test_kit.py.
"""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.export import figures


def test_forest_plot_shows_significant_then_largest_gaps(hostile_inputs):
    gaps = hostile_inputs.audits[0].gaps
    chosen = figures.select_forest_gaps(gaps, max_rows=10)
    best_worst = gaps[gaps["comparison"] == "best-worst"]
    assert len(chosen) == min(10, len(best_worst)) and set(chosen["comparison"]) == {"best-worst"}
    n_sig = int(best_worst["significant"].sum())
    assert chosen["significant"].head(min(n_sig, 10)).all()
    rest = chosen[~chosen["significant"].astype(bool)]["gap"].abs()
    assert list(rest) == sorted(rest, reverse=True)
    chart = figures.create_gaps_forest_figure(gaps, max_rows=10).to_dict()
    assert sorted(len(rows) for rows in chart["datasets"].values()) == [1, 10]  # the zero line, 10 gaps


def test_group_accuracy_figure_in_natural_order(hostile_inputs):
    spec = figures.create_group_accuracy_figure(hostile_inputs.audits[0].cells).to_dict()
    age_panel = spec["vconcat"][2]["layer"][0]["encoding"]["y"]
    assert [s.split(" (")[0] for s in age_panel["sort"]] == ["0-3", "4-19", "20-39", "40-69", "70+"]
    assert age_panel["title"] == "age"


def test_mean_cams_weight_correct_and_misclassified_by_n(hostile_inputs):
    summary = hostile_inputs.heatmap_summary
    cams = figures.compute_mean_cams(summary)
    part = summary[summary["emotion"] == "Fear"]
    maps = [pd.Series(list(memoryview(b).cast("f"))) for b in part["mean_cam"]]
    expected = sum(m * n for m, n in zip(maps, part["n"])) / part["n"].sum()
    assert cams["Fear"].shape == (32, 32)
    assert cams["Fear"].ravel() == pytest.approx(expected.to_numpy(), abs=1e-5)
