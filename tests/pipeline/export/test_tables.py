"""Table export: CSV round-trips, LaTeX booktabs with escaping, Markdown pipe tables, table builders."""
from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest

from pipeline.export import tables as export
from pipeline.fairness.audit import AuditConfig, compute_audit
from pipeline.constants import EMOTIONS
from tests.pipeline.export.latex_check import compile_body, requires_pdflatex


@pytest.fixture
def awkward():
    return pd.DataFrame({
        "group": ["a_b & c", "50% | 100%", "x^2 {y} ~z #1 $", "back\\slash"],
        "n": [10, 20, 30, 40],
        "value": [0.12345, np.nan, 1.0, 0.5],
    })


def test_csv_round_trips(awkward):
    text = export.to_csv(awkward)
    back = pd.read_csv(io.StringIO(text))
    pd.testing.assert_frame_equal(back, awkward)
    assert text.splitlines()[0] == "group,n,value"


def test_latex_booktabs_and_escaping(awkward):
    text = export.to_latex(awkward, caption="Accuracy by group_1 (95% CI)", label="tab:audit")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"\begin{tabular}{lrr}", r"\begin{table}",
                  r"\caption{Accuracy by group\_1 (95\% CI)}", r"\label{tab:audit}"):
        assert token in text
    assert r"a\_b \& c" in text
    assert r"50\% \textbar{} 100\%" in text
    assert r"x\^{}2 \{y\} \~{}z \#1 $\$$" in text
    assert r"back\textbackslash{}slash" in text
    assert "0.123" in text and " -- " in text  # 3 decimals; missing value as an en dash
    body = text.split(r"\midrule")[1].split(r"\bottomrule")[0].strip().splitlines()
    assert len(body) == 4 and all(line.endswith(r"\\") and line.count(" & ") == 2 for line in body)


def test_latex_non_ascii_from_our_tables():
    text = export.to_latex(pd.DataFrame({"attribute": ["gender×race"], "value": [float("nan")]}))
    assert r"gender$\times$race" in text and "--" in text and "×" not in text and "–" not in text


def test_latex_without_caption_is_a_bare_tabular(awkward):
    text = export.to_latex(awkward)
    assert text.startswith(r"\begin{tabular}") and r"\begin{table}" not in text


def test_latex_compiles_structure_is_balanced(awkward):
    text = export.to_latex(awkward, caption="c", label="l")
    assert text.count(r"\begin{") == text.count(r"\end{")
    # Every unescaped special would break compilation: none left in the cells.
    body = text.split(r"\midrule")[1]
    stripped = body.replace(r"\&", "").replace(r"\%", "").replace(r"\_", "").replace(r"\#", "").replace(r"$\$$", "")
    assert " & " in stripped and "%" not in stripped and "_" not in stripped and "#" not in stripped


def test_markdown_escapes_pipes(awkward):
    text = export.to_markdown(awkward)
    lines = text.strip().splitlines()
    assert lines[0] == "| group | n | value |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert r"50% \| 100%" in lines[3]
    assert all(len(re.split(r"(?<!\\)\|", line)) == 5 for line in lines)  # 3 cells between unescaped pipes


@pytest.mark.parametrize("args,expected", [
    ((0.8234, 0.801, 0.843, 1200), "0.823 [0.801, 0.843] (n=1200)"),
    ((0.5, None, None, 12), "0.500 (n=12)"),
    ((0.5, 0.4, 0.6, None), "0.500 [0.400, 0.600]"),
    ((float("nan"), None, None, 0), "– (n=0)"),
])
def test_format_estimate(args, expected):
    assert export.format_estimate(*args) == expected


def test_render_table_rejects_unknown_format(awkward):
    with pytest.raises(ValueError, match="format"):
        export.render_table(awkward, "html")


@pytest.fixture(scope="module")
def audit_result():
    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"gender": rng.choice(["male", "female"], n), "race": rng.choice(["Asian", "Caucasian"], n),
                          "age": "20-39", "true_label": rng.choice(EMOTIONS, n)})
    frame["pred_label"] = np.where(rng.random(n) < 0.7, frame["true_label"], "Neutral")
    frame.loc[:4, "race"] = "African-American"  # 5 images: low support
    return compute_audit(frame, EMOTIONS, AuditConfig(n_boot=100, n_perm=100, max_order=1))


def test_audit_table(audit_result):
    table = export.compute_audit_table(audit_result.cells, attribute="race")
    assert list(table.columns) == ["race", "n", "accuracy", "macro-F1"]
    row = table.set_index("race").loc["Asian"]
    cell = audit_result.cells.set_index(["attribute", "grp", "metric"]).loc[("race", "Asian", "accuracy")]
    assert row["accuracy"] == export.format_estimate(cell["value"], cell["ci_low"], cell["ci_high"], digits=2)
    assert row["n"] == str(cell["n"])
    assert table.set_index("race").loc["African-American", "n"] == "5" + export.LOW_SUPPORT_MARK
    assert list(table["race"]) == ["Caucasian", "African-American", "Asian"]  # code order, not text order
    assert "African-American" in export.to_latex(table)
    everything = export.compute_audit_table(audit_result.cells)
    assert list(everything.columns[:3]) == ["attribute", "group", "n"]
    assert list(dict.fromkeys(everything["attribute"]))[:3] == ["gender", "race", "age"]


def test_gaps_table(audit_result):
    table = export.compute_gaps_table(audit_result.gaps, metric="accuracy")
    assert set(table["vs"]) == {"best"}
    assert list(table.columns) == ["attribute", "metric", "vs", "group", "gap [95% CI]", "p", "p adj.", "family"]
    # Each attribute's accuracy is the primary family (Holm); the rest exploratory (BH), labelled so.
    assert set(table["family"]) == {"primary"}
    assert "exploratory" in set(export.compute_gaps_table(audit_result.gaps, comparison=None)["family"])
    assert len(export.compute_gaps_table(audit_result.gaps, comparison=None)) == len(audit_result.gaps)
    assert "gap [90% CI]" in export.compute_gaps_table(audit_result.gaps, alpha=0.1).columns
    race = export.compute_gaps_table(audit_result.gaps, comparison=None, attribute="race")
    assert list(race.columns) == ["metric", "vs", "race", "gap [95% CI]", "p", "p adj.", "family"]


def _cells(attribute, groups, metrics=("accuracy",)):
    return pd.DataFrame([{"attribute": attribute, "grp": g, "metric": m, "n": 40, "value": 0.5, "ci_low": 0.4,
                          "ci_high": 0.6, "low_support": False} for g in groups for m in metrics])


def test_natural_order_of_ages_intersections_emotions_and_metrics():
    ages = export.compute_audit_table(_cells("age", ["70+", "40-69", "4-19", "20-39", "0-3"]), attribute="age")
    assert list(ages["age"]) == ["0-3", "4-19", "20-39", "40-69", "70+"]
    groups = [f"{g} | {a} | {e}" for g in ("female", "male") for a in ("20-39", "0-3") for e in ("Anger", "Fear")]
    table = export.compute_audit_table(_cells("gender×age×emotion", groups), attribute="gender×age×emotion")
    assert list(table.columns[:3]) == ["gender", "age", "emotion"]
    assert [tuple(r) for r in table[["gender", "age", "emotion"]].to_numpy()] == [
        ("male", "0-3", "Fear"), ("male", "0-3", "Anger"), ("male", "20-39", "Fear"), ("male", "20-39", "Anger"),
        ("female", "0-3", "Fear"), ("female", "0-3", "Anger"), ("female", "20-39", "Fear"),
        ("female", "20-39", "Anger")]
    metrics = ["recall:Anger", "macro_f1", "recall:Surprise", "accuracy"]
    wide = export.compute_audit_table(_cells("gender", ["male"], metrics), metrics=metrics, attribute="gender")
    assert list(wide.columns) == ["gender", "n", "accuracy", "macro-F1", "recall (Surprise)", "recall (Anger)"]
    assert export.sort_attributes(["gender×race", "age", "race×emotion", "gender", "gender×race×emotion",
                                   "race"]) == ["gender", "race", "age", "gender×race", "race×emotion",
                                                "gender×race×emotion"]


@pytest.mark.parametrize("alpha, level", [(0.05, "95%"), (0.1, "90%"), (0.01, "99%"), (0.025, "97.5%")])
def test_format_level(alpha, level):
    assert export.format_level(alpha) == level


def test_class_metrics_and_confusion_tables():
    from sklearn.metrics import classification_report, confusion_matrix
    rng = np.random.default_rng(1)
    classes = list(EMOTIONS)
    y_true = rng.choice(classes, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.choice(classes, 200))
    report = classification_report(y_true, y_pred, labels=classes, output_dict=True, zero_division=0)
    rows = [{"split": "test", "label": k, "precision": v["precision"], "recall": v["recall"], "f1": v["f1-score"],
             "support": int(v["support"])} for k, v in report.items() if k != "accuracy"]
    rows.append({"split": "test", "label": "accuracy", "precision": None, "recall": None, "f1": report["accuracy"],
                 "support": 200})
    table = export.compute_class_metrics_table(pd.DataFrame(rows[::-1]), classes=classes)
    assert list(table["class"]) == classes + ["accuracy", "macro avg", "weighted avg"]
    assert table.set_index("class").loc["Fear", "f1"] == pytest.approx(report["Fear"]["f1-score"], abs=5e-4)

    counts = pd.crosstab(pd.Series(y_true, name="true_label"), pd.Series(y_pred, name="pred_label")).stack()
    conf = counts.rename("n").reset_index().assign(split="test")
    conf = conf[conf["n"] > 0]
    table = export.compute_confusion_table(conf, classes)
    np.testing.assert_array_equal(table[classes].to_numpy(), confusion_matrix(y_true, y_pred, labels=classes))
    assert list(table.iloc[:, 0]) == classes
    normed = export.compute_confusion_table(conf, classes, normalize=True)
    np.testing.assert_allclose(normed[classes].sum(axis=1), 1.0, atol=0.01)


def test_proxy_table():
    agreement = pd.DataFrame({"source": "deepface", "attribute": "gender", "annotated": ["male", "male", "female"],
                              "inferred": ["male", "female", "female"], "n": [8, 2, 5]})
    table = export.compute_proxy_table(agreement)
    assert list(table["annotated"]) == ["male", "female"]  # code order
    table = table.set_index("annotated")
    assert table.loc["male", "agreement [95% CI]"].startswith("0.80 [")
    assert table.loc["male", "most frequent other label"] == "female (2)"
    assert "agreement [99% CI]" in export.compute_proxy_table(agreement, alpha=0.01).columns
    assert table.loc["female", "most frequent other label"] == "–"


def _seed_spread() -> pd.DataFrame:
    from pipeline.train.seeds import SPREAD_COLUMNS

    return pd.DataFrame([{
        "recipe": "resnet50-transfer", "model": "resnet50", "dataset": "rafdb", "n_seeds": 5,
        "seeds": "0, 1, 2, 3, 4", "accuracy_mean": 0.8866, "accuracy_sd": 0.00432, "accuracy_min": 0.882,
        "accuracy_max": 0.893, "macro_f1_mean": 0.7624, "macro_f1_sd": 0.02157, "macro_f1_min": 0.742,
        "macro_f1_max": 0.790, "n_test": 3068, "run_ids": "a, b, c, d, e"}], columns=SPREAD_COLUMNS)


def test_seed_spread_table_is_mean_sd_and_range():
    table = export.compute_seed_spread_table(_seed_spread())
    assert table.to_dict("records") == [{"recipe": "resnet50-transfer", "dataset": "rafdb", "seeds": 5,
                                         "accuracy": "0.887 ± 0.004 (0.882–0.893)",
                                         "macro-F1": "0.762 ± 0.022 (0.742–0.790)"}]
    assert r"0.887 $\pm$ 0.004 (0.882--0.893)" in export.to_latex(table, caption="Across seeds", label="tab:s")


@requires_pdflatex
def test_seed_spread_table_compiles_and_fits_the_page(tmp_path):
    compile_body(tmp_path, export.to_latex(export.compute_seed_spread_table(_seed_spread()),
                                           caption="Across seeds", label="tab:seeds"))
