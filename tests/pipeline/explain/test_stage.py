"""The explain stage end to end (pipeline/explain/stage.py through `python -m pipeline explain`)."""
from __future__ import annotations

import numpy as np
import pytest

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.synth.faces import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("explain-synth") / "synthetic"
    generate_dataset(root, SynthConfig(n=60, seed=5, workers=1), progress=False)
    db = tmp_path_factory.mktemp("explain-db") / "results.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(root), "--db", str(db), "--recipe",
                 "lightcnn-softlabel", "--epochs", "1", "--batch-size", "16", "--image-size", "16", "--quiet",
                 "--device", "cpu"]) == 0
    with store.open_store(db, read_only=True) as con:
        run = store.get_run(con, "latest")
        preds = store.load_frame(con, "predictions", run_id=run["run_id"], split="test")
    return db, run, preds


def test_explain_command_stores_heatmaps_tags_and_metrics(trained_run):
    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.constants import FACE_REGIONS

    db, run, preds = trained_run
    args = ["explain", "--db", str(db), "--run", run["run_id"][:12], "--methods", "gradcam,eigencam",
            "--faithfulness-samples", "4", "--sanity-samples", "4", "--n-boot", "50", "--quiet"]
    assert main(args) == 0
    with store.open_store(db, read_only=True) as con:
        heat = store.load_frame(con, "heatmaps", run_id=run["run_id"])
        tags = store.load_frame(con, "failure_tags", run_id=run["run_id"])
        metrics = store.load_frame(con, "explanation_metrics", run_id=run["run_id"])
    wrong = preds[preds["true_label"] != preds["pred_label"]]
    for method in ("gradcam", "eigencam"):
        h = heat[heat["method"] == method]
        assert (h["target"] == "pred").sum() == len(preds)
        assert set(h.loc[h["target"] == "true", "image_id"]) == set(wrong["image_id"])
        energies = h[[f"e_{r}" for r in FACE_REGIONS]].to_numpy(float)
        ok = ~np.isnan(energies).any(axis=1)
        np.testing.assert_allclose(energies[ok].sum(axis=1), 1.0, atol=1e-5)
        assert all(len(b) == 32 * 32 for b in h["cam"])
        assert h["gt_energy"].notna().any()  # synthetic: ground truth known
        m = metrics[metrics["method"] == method]
        for metric in ("gt_energy", "gt_energy_uniform", "gt_energy_shuffled", "pointing", "pointing_shuffled",
                       "road_morf", "conf_drop", "sanity_spearman"):
            assert ((m["metric"] == metric) & (m["emotion"] == "all")).any(), metric
    confusion = tags[tags["tag"].str.startswith("confusion:")]
    assert set(confusion["image_id"]) == set(wrong["image_id"])
    assert (confusion["method"] == "").all()
    # Re-running replaces a method's rows rather than adding to them.
    assert main(args[:6] + ["gradcam", "--faithfulness-samples", "0", "--sanity-samples", "0", "--quiet"]) == 0
    with store.open_store(db, read_only=True) as con:
        again = store.load_frame(con, "heatmaps", run_id=run["run_id"])
    assert len(again) == len(heat)


def test_explain_stores_the_exact_mean_of_its_heatmaps(trained_run, tmp_path):
    import shutil

    import pandas as pd

    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.constants import FACE_REGIONS

    src, run, preds = trained_run
    from pipeline.paths import runs_dir_for

    db = tmp_path / "summary.duckdb"
    shutil.copy(src, db)
    shutil.copytree(runs_dir_for(src), runs_dir_for(db))  # checkpoints load only from the store's own runs/
    energy = [f"e_{r}" for r in FACE_REGIONS]
    args = ["explain", "--db", str(db), "--run", run["run_id"], "--methods", "gradcam,layercam",
            "--faithfulness-samples", "0", "--sanity-samples", "0", "--quiet"]
    assert main(args) == 0
    with store.open_store(db, read_only=True) as con:
        heat = store.load_frame(con, "heatmaps", run_id=run["run_id"], target="pred")
        summary = store.load_frame(con, "heatmap_summary", run_id=run["run_id"])
    assert {"gradcam", "layercam"} <= set(summary["method"]) and (summary["split"] == "test").all()
    heat = heat.merge(preds[["image_id", "true_label", "correct"]], on="image_id")
    for method in ("gradcam", "layercam"):
        got = summary[summary["method"] == method].set_index(["emotion", "correct"]).sort_index()
        h = heat[heat["method"] == method]
        counts = preds.groupby(["true_label", "correct"]).size()
        assert got["n"].to_dict() == {k: int(v) for k, v in counts.items()}  # one row per (emotion, correct)
        for (emotion, correct), g in h.groupby(["true_label", "correct"]):
            row = got.loc[(emotion, correct)]
            np.testing.assert_allclose(row[energy].to_numpy(float), g[energy].mean().to_numpy(float), atol=1e-6)
            size = int(row["cam_size"])
            stored = np.stack([np.frombuffer(b, np.uint8).reshape(size, size) for b in g["cam"]])
            mean_cam = np.frombuffer(row["mean_cam"], "<f4").reshape(size, size)
            assert np.allclose(mean_cam, stored.mean(axis=0) / 255.0, atol=1e-6)
            assert mean_cam.std() > 0  # a real map, not a constant
    # Re-explaining a method replaces its summary rows; deleting the run removes them all.
    assert main(args[:6] + ["gradcam", "--faithfulness-samples", "0", "--sanity-samples", "0", "--quiet"]) == 0
    with store.open_store(db, read_only=True) as con:
        again = store.load_frame(con, "heatmap_summary", run_id=run["run_id"])
    keys = ["method", "split", "emotion", "correct", "n"]
    pd.testing.assert_frame_equal(again[keys], summary[keys])
    assert main(["runs", "--db", str(db), "--delete", run["run_id"]]) == 0
    with store.open_store(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM heatmap_summary").fetchone()[0] == 0


def test_explain_names_a_missing_run_or_checkpoint(trained_run, tmp_path, capsys):
    import shutil

    from pipeline.store import db as store
    from pipeline.cli import main

    db, run, _ = trained_run
    assert main(["explain", "--db", str(db), "--run", "nosuchrun", "--quiet"]) == 2
    assert "nosuchrun" in capsys.readouterr().err
    copy = tmp_path / "copy.duckdb"
    shutil.copy(db, copy)
    with store.open_store(copy) as con:
        con.execute("UPDATE runs SET checkpoint_path = ? WHERE run_id = ?", [str(tmp_path / "gone.pt"), run["run_id"]])
    assert main(["explain", "--db", str(copy), "--run", run["run_id"], "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "gone.pt" in err and run["run_id"] in err




def test_trained_runs_get_gradient_free_maps_with_their_checks_and_agreement(trained_run, capsys):
    from pipeline.store import db as store
    from pipeline.cli import main
    from pipeline.constants import FACE_REGIONS

    db, run, preds = trained_run
    assert main(["explain", "--db", str(db), "--run", run["run_id"], "--methods", "gradcam,occlusion,rise",
                 "--faithfulness-samples", "4", "--sanity-samples", "4", "--n-boot", "30", "--rise-masks", "30",
                 "--perturbation-batch-size", "50", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "occlusion: no randomisation sanity check" in out and "gradcam: no randomisation" not in out
    with store.open_store(db, read_only=True) as con:
        heat = store.load_frame(con, "heatmaps", run_id=run["run_id"])
        metrics = store.load_frame(con, "explanation_metrics", run_id=run["run_id"])
    for method in ("occlusion", "rise"):
        h = heat[heat["method"] == method]
        assert (h["target_layer"] == "input").all() and (h["target"] == "pred").sum() == len(preds)
        energies = h[[f"e_{r}" for r in FACE_REGIONS]].to_numpy(float)
        ok = ~np.isnan(energies).any(axis=1)
        np.testing.assert_allclose(energies[ok].sum(axis=1), 1.0, atol=1e-5)
        m = metrics[metrics["method"] == method]
        overall = set(m.loc[m["emotion"] == "all", "metric"])
        assert {"gt_energy", "gt_energy_uniform", "gt_energy_shuffled", "road_morf", "conf_drop",
                "agree_gradcam_spearman"} <= overall, overall
        assert not any(k.startswith("sanity") for k in overall)
        agree = m[m["metric"] == "agree_gradcam_spearman"]
        assert set(agree["emotion"]) - {"all"} <= set(preds["true_label"]) and len(agree) > 1
        assert ((agree["value"] >= -1) & (agree["value"] <= 1)).all()
    assert "sanity_spearman" in set(metrics.loc[metrics["method"] == "gradcam", "metric"])
    assert not (metrics["method"].eq("gradcam") & metrics["metric"].str.startswith("agree")).any()


def _heat(method: str, energies: np.ndarray) -> "pd.DataFrame":
    import pandas as pd

    from pipeline.constants import ENERGY_COLUMNS

    frame = pd.DataFrame(energies, columns=list(ENERGY_COLUMNS))
    return frame.assign(image_id=[f"img{i}" for i in range(len(frame))], target="pred", method=method)


def test_agreement_rows_rank_region_energies_against_gradcam():
    import pandas as pd

    from pipeline.constants import ENERGY_COLUMNS
    from pipeline.explain.stage import compute_agreement_rows

    rng = np.random.default_rng(0)
    ref = rng.dirichlet(np.ones(len(ENERGY_COLUMNS)), size=8)
    preds = pd.DataFrame({"image_id": [f"img{i}" for i in range(8)], "true_label": ["Fear", "Anger"] * 4})
    frames = {"gradcam": _heat("gradcam", ref), "occlusion": _heat("occlusion", ref * 2),  # same ranking
              "rise": _heat("rise", 1 - ref)}                                             # the reverse
    rows = compute_agreement_rows(frames, preds, gradient_free=("occlusion", "rise"), n_boot=20, seed=0)
    value = {m: {r["emotion"]: r["value"] for r in rs} for m, rs in rows.items()}
    assert value["occlusion"] == {"all": pytest.approx(1.0), "Anger": pytest.approx(1.0), "Fear": pytest.approx(1.0)}
    assert value["rise"]["all"] == pytest.approx(-1.0)
    assert all(r["metric"] == "agree_gradcam_spearman" and r["n"] > 0 for rs in rows.values() for r in rs)
    # Without Grad-CAM in the same run there is nothing to agree with.
    assert compute_agreement_rows({"rise": frames["rise"]}, preds, gradient_free=("rise",), n_boot=20, seed=0) == {}


def test_method_names_are_checked_with_the_choices():
    from pipeline.explain.stage import validate_explain_methods

    assert validate_explain_methods([" GradCAM", "rise", "rise"]) == ("gradcam", "rise")
    with pytest.raises(ValueError, match="'shap'.*occlusion, rise"):
        validate_explain_methods(["gradcam", "shap"])


@pytest.mark.parametrize("source, gradient_free, applies", [
    ("checkpoint", False, True), ("pytorch", False, True), ("checkpoint", True, False),
    ("torchscript", False, False), ("onnx", True, False)])
def test_the_sanity_check_needs_weights_and_a_cam_method(source, gradient_free, applies):
    from pipeline.explain.checks import describe_sanity_skip

    why = describe_sanity_skip(model_source=source, gradient_free=gradient_free)
    assert (why is None) == applies
    if source in ("torchscript", "onnx"):
        assert f"{source} file" in why
