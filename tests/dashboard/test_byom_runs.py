"""Every page on runs made by the real pipeline from outside models: an ONNX export explained with the
gradient-free methods, a TorchScript export with Grad-CAM and occlusion, and imported predictions; and the
Compare page pairing an external run with the trained run it came from, on the same test images."""
from __future__ import annotations

import pytest

from pipeline.cli import main
from tests.dashboard.conftest import open_page, read_tables
from tests.pipeline.external.stores import create_byom_store, dataset_args, latest_run

PAGES = ["overview", "performance", "errors", "explanations", "fairness", "compare", "export", "twins"]
SMALL = ["--limit", "12", "--faithfulness-samples", "6", "--sanity-samples", "6", "--n-boot", "30",
         "--rise-masks", "40", "--quiet"]


@pytest.fixture(scope="module")
def byom_store(demo_store, tmp_path_factory):
    """{db, kinds: {'onnx' | 'torchscript' | 'predictions' | 'train': run_id}}, every run audited."""
    made = create_byom_store(demo_store, tmp_path_factory.mktemp("byom-dashboard"))
    db, runs = made["db"], {"train": made["train"]["run_id"]}
    for fmt, methods in (("onnx", []), ("torchscript", ["--methods", "gradcam,occlusion"])):
        runs[fmt] = made["external"][fmt]["run_id"]
        assert main(["explain", "--run", runs[fmt], "--db", str(db), *methods, *SMALL]) == 0
    assert main(["import-predictions", str(made["folder"] / "preds.csv"), *dataset_args(made["train"]),
                 "--db", str(db)]) == 0
    runs["predictions"] = latest_run(db, "predictions")["run_id"]
    for kind in ("onnx", "torchscript", "predictions"):  # the demo stored the faces' demographics
        assert main(["audit", "--run", runs[kind], "--n-boot", "30", "--n-perm", "30", "--db", str(db)]) == 0
    return {"db": db, "runs": runs}


@pytest.mark.parametrize("kind", ["onnx", "predictions"])
@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_on_external_and_predictions_runs(make_app, byom_store, kind, page):
    at = open_page(make_app, byom_store["db"], f"views/{page}.py", run=byom_store["runs"][kind])
    assert at.selectbox(key="run").value == byom_store["runs"][kind]


def test_explanations_show_gradient_free_methods_and_the_checks_that_do_not_apply(make_app, byom_store):
    at = open_page(make_app, byom_store["db"], "views/explanations.py", run=byom_store["runs"]["onnx"])
    assert at.selectbox(key="xmethod").options == ["occlusion", "rise"]
    captions = [c.value for c in at.caption]
    assert any("gradient-free" in c for c in captions), captions
    assert any(c.startswith("No randomisation sanity check for occlusion, rise") and "an onnx file" in c
               for c in captions), captions
    assert any(c.startswith("No agreement with Grad-CAM for occlusion, rise") for c in captions), captions
    checks = next(d for d in read_tables(at) if "rule" in d.columns)
    assert set(checks["method"]) == {"occlusion", "rise"}  # localisation checks on the synthetic set


def test_explanations_show_agreement_with_gradcam(make_app, byom_store):
    at = open_page(make_app, byom_store["db"], "views/explanations.py", run=byom_store["runs"]["torchscript"],
                   xmethod="occlusion")
    assert "Gradient-free maps against Grad-CAM" in [s.value for s in at.subheader]
    agree = next(d for d in read_tables(at) if {"method", "ci_low", "ci_high"} <= set(d.columns)
                 and "rule" not in d.columns and "metric" not in d.columns)
    assert list(agree["method"]) == ["occlusion"] and list(agree["emotion"]) == ["all"]
    captions = [c.value for c in at.caption]
    assert any("No randomisation sanity check for gradcam, occlusion" in c and "a torchscript file" in c
               for c in captions), captions


def test_predictions_run_explanations_say_why_there_are_no_heatmaps(make_app, byom_store):
    at = open_page(make_app, byom_store["db"], "views/explanations.py", run=byom_store["runs"]["predictions"])
    assert any("preds.csv: there is no model to explain" in i.value for i in at.info), [i.value for i in at.info]


def test_compare_pairs_an_external_run_with_its_trained_run(make_app, byom_store):
    from pipeline.store import db as store

    runs = byom_store["runs"]
    at = make_app(byom_store["db"])
    at.query_params["run"] = runs["train"]
    at.query_params["runs"] = [runs["train"], runs["torchscript"]]
    at.run()
    at.switch_page("views/compare.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="pair_a").value == runs["train"] and at.selectbox(key="pair_b").value == runs["torchscript"]
    with store.open_store(byom_store["db"], read_only=True) as con:
        n_test = len(store.load_frame(con, "predictions", ["image_id"], run_id=runs["train"], split="test"))
    text = " ".join(m.value for m in at.markdown)
    # The export predicts what the checkpoint predicts: every shared image, none right by one run only.
    assert f"On the **{n_test}** test images" in text
    assert "right only by A **0**, only by B **0**" in text
    shared = next(d for d in read_tables(at) if "n_shared" in d.columns)
    assert set(shared["n_shared"]) == {n_test}
