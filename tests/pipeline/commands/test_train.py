"""End-to-end `train`, `evaluate` (and `demo` wiring) through the real CLI into temporary DuckDB stores.

Tiny runs on CPU: a ~80-image synthetic set, 16-32 px inputs, 1-2 epochs.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from pipeline.store import db as store
from pipeline.cli import main
from pipeline.train.models import create_model, load_model_from_checkpoint
from pipeline.paths import runs_dir_for

LIGHT = ["--recipe", "lightcnn-softlabel", "--epochs", "2", "--batch-size", "16", "--image-size", "16", "--quiet",
         "--device", "cpu"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from pipeline.synth.faces import SynthConfig, generate_dataset

    root = tmp_path_factory.mktemp("synth") / "synthetic"
    generate_dataset(root, SynthConfig(n=80, seed=3, workers=1), progress=False)
    return root


def _newest_run(db, include_incomplete=False) -> dict:
    with store.open_store(db, read_only=True) as con:
        runs = store.list_runs(con, include_incomplete=include_incomplete)
    return runs.iloc[0].to_dict()


def _frame(db, table, run_id):
    with store.open_store(db, read_only=True) as con:
        return store.load_frame(con, table, run_id=run_id)


def _train(db, root, *extra) -> dict:
    assert main(["train", "--dataset", "synthetic", "--root", str(root), "--db", str(db), *LIGHT, *extra]) == 0
    return _newest_run(db)


@pytest.fixture(scope="module")
def light_run(synth_root, tmp_path_factory):
    db = tmp_path_factory.mktemp("light") / "results.duckdb"
    return db, _train(db, synth_root)


def test_light_run_stores_everything(light_run, synth_root):
    db, run = light_run
    from pipeline.data.loaders import load_dataset

    assert run["status"] == "complete" and run["kind"] == "train" and run["recipe"] == "lightcnn-softlabel"
    assert list(run["classes"]) == ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger"]
    import json

    config = json.loads(run["config"])
    dataset = load_dataset(**config["dataset"])  # the config rebuilds the data
    assert run["dataset_fingerprint"] == dataset.fingerprint and run["is_synthetic"]
    rid = run["run_id"]
    epochs = _frame(db, "epochs", rid)
    assert epochs["epoch"].tolist() == [1, 2] and epochs["lr"].notna().all()
    images = _frame(db, "images", rid)
    assert len(images) == len(dataset.records) and set(images["split"]) == {"train", "val", "test"}
    assert images["soft_label"].map(len).eq(6).all()
    preds = _frame(db, "predictions", rid)
    assert set(preds["split"]) == {"val", "test"}
    assert len(preds) == len(dataset.split("val")) + len(dataset.split("test"))
    probs = np.stack(preds["probs"].to_numpy())
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)

    # stored metrics equal scikit-learn's on the stored predictions
    test = preds[preds["split"] == "test"]
    labels = list(run["classes"])
    metrics = _frame(db, "class_metrics", rid).query("split == 'test'").set_index("label")
    assert run["test_accuracy"] == pytest.approx(accuracy_score(test["true_label"], test["pred_label"]))
    assert metrics.loc["accuracy", "f1"] == pytest.approx(run["test_accuracy"])
    assert run["test_macro_f1"] == pytest.approx(
        f1_score(test["true_label"], test["pred_label"], labels=labels, average="macro", zero_division=0))
    assert run["n_test"] == len(test)
    confusion = _frame(db, "confusion", rid).query("split == 'test'")
    assert confusion["n"].sum() == len(test) and len(confusion) == 36

    # the checkpoint reproduces the stored probabilities
    assert run["checkpoint_path"].endswith("best.pt")
    model, meta = load_model_from_checkpoint(run["checkpoint_path"])
    assert meta["classes"] == labels and meta["image_size"] == 16 and meta["recipe"] == "lightcnn-softlabel"
    from pipeline.data.images import load_images_array
    from pipeline.train.loop import predict_probabilities

    records = dataset.split("test")
    again = predict_probabilities(model, load_images_array(records, 16), meta)
    stored = np.stack(test.set_index("image_id").loc[[r.image_id for r in records], "probs"].to_numpy())
    np.testing.assert_allclose(again, stored, atol=1e-5)
    assert (runs_dir_for(db) / rid / "last.pt").is_file()


def test_same_seed_same_predictions(light_run, synth_root, tmp_path):
    db, run = light_run
    again = _train(tmp_path / "again.duckdb", synth_root)
    a = _frame(db, "predictions", run["run_id"])
    b = _frame(tmp_path / "again.duckdb", "predictions", again["run_id"])
    assert a["pred_label"].tolist() == b["pred_label"].tolist()
    np.testing.assert_array_equal(np.stack(a["probs"].to_numpy()), np.stack(b["probs"].to_numpy()))


def test_resume_continues_to_the_same_result(light_run, synth_root, tmp_path):
    db0, run0 = light_run
    db = tmp_path / "resume.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(synth_root), "--db", str(db), *LIGHT,
                 "--stop-after", "1"]) == 0
    stopped = _newest_run(db, include_incomplete=True)
    assert stopped["status"] == "failed"  # interrupted: not visible as complete
    assert main(["train", "--resume", stopped["run_id"][:22], "--db", str(db), "--quiet"]) == 0
    resumed = _newest_run(db)
    assert resumed["run_id"] == stopped["run_id"] and resumed["status"] == "complete"
    assert _frame(db, "epochs", resumed["run_id"])["epoch"].tolist() == [1, 2]
    a = _frame(db0, "predictions", run0["run_id"])
    b = _frame(db, "predictions", resumed["run_id"])
    np.testing.assert_array_equal(np.stack(a["probs"].to_numpy()), np.stack(b["probs"].to_numpy()))


def test_resnet50_tiny_and_cross_dataset_evaluate(synth_root, tmp_path):
    db = tmp_path / "r50.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(synth_root), "--db", str(db),
                 "--recipe", "resnet50-transfer", "--weights", "none", "--image-size", "32", "--batch-size", "4",
                 "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    run = _newest_run(db)
    assert run["model"] == "resnet50" and len(run["classes"]) == 7
    # a 7-class model on the 6-class load: probabilities restricted and renormalised
    assert main(["evaluate", "--run", run["run_id"], "--dataset", "synthetic", "--root", str(synth_root),
                 "--classes", "6", "--db", str(db), "--quiet", "--device", "cpu"]) == 0
    ev = _newest_run(db)
    assert ev["kind"] == "evaluate" and ev["parent_run_id"] == run["run_id"] and len(ev["classes"]) == 6
    probs = np.stack(_frame(db, "predictions", ev["run_id"])["probs"].to_numpy())
    assert probs.shape[1] == 6
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)


def test_evaluate_six_class_model_on_seven_classes_reports_unmappable(light_run, synth_root, capsys):
    db, run = light_run
    from pipeline.data.loaders import load_dataset

    neutral = sum(1 for r in load_dataset("synthetic", synth_root, 7).split("test") if r.label == 6)
    assert main(["evaluate", "--run", run["run_id"], "--dataset", "synthetic", "--root", str(synth_root),
                 "--classes", "7", "--db", str(db), "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    if neutral:
        assert f"{neutral} images excluded as unmappable" in out and "Neutral" in out
    ev = _newest_run(db)
    import json

    assert json.loads(ev["config"])["unmappable"]["count"] == neutral
    assert ev["n_test"] == _frame(db, "predictions", ev["run_id"]).shape[0]
    assert list(ev["classes"]) == list(run["classes"])


def test_imagenet_weights_unavailable_is_clear(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    db = tmp_path / "w.duckdb"
    rc = main(["train", "--dataset", "synthetic", "--root", str(synth_root), "--db", str(db),
               "--recipe", "resnet50-transfer", "--weights", "imagenet", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "resnet50-11ad3fa6.pth" in err and str(tmp_path / "torch" / "hub" / "checkpoints") in err
    assert "Traceback" not in err


def test_weights_path_state_dict(synth_root, tmp_path):
    torch.manual_seed(5)
    path = tmp_path / "init.pt"
    source = create_model("lightcnn", 6)
    torch.save(source.state_dict(), path)
    db = tmp_path / "p.duckdb"
    run = _train(db, synth_root, "--arch", "lightcnn", "--weights", str(path), "--epochs", "1")
    import json

    assert json.loads(run["config"])["weights"] == str(path)
    # training started from the file: a frozen-free model moved away from it, but only a little in 1 epoch
    model, _ = load_model_from_checkpoint(run["checkpoint_path"])
    start = source.block1[0][0].weight
    assert model.block1[0][0].weight.shape == start.shape
    assert torch.nn.functional.cosine_similarity(model.block1[0][0].weight.flatten(), start.flatten(), 0) > 0.9


def test_crash_mid_run_leaves_store_consistent(light_run, synth_root, tmp_path, capsys):
    db = tmp_path / "crash.duckdb"
    shutil.copy(light_run[0], db)
    broken = tmp_path / "broken"
    shutil.copytree(synth_root, broken)
    victim = sorted((broken / "Image" / "aligned").glob("test_*"))[0]
    victim.write_bytes(b"not a jpeg")
    with store.open_store(db, read_only=True) as con:
        before = store.list_runs(con, include_incomplete=True).set_index("run_id")
    rc = main(["train", "--dataset", "synthetic", "--root", str(broken), "--db", str(db), *LIGHT])
    assert rc == 2 and victim.name in capsys.readouterr().err
    with store.open_store(db, read_only=True) as con:
        runs = store.list_runs(con, include_incomplete=True).set_index("run_id")
        assert (runs.loc[before.index, "status"] == "complete").all()  # earlier runs intact
        new = runs.drop(index=before.index)
        assert len(new) == 1 and new["status"].tolist() == ["failed"]
        assert store.load_frame(con, "predictions", run_id=new.index[0]).empty
        earlier = light_run[1]["run_id"]
        assert len(store.load_frame(con, "predictions", run_id=earlier)) > 0


def test_command_line_overrides_reach_the_recipe():
    from pipeline.cli import build_parser
    from pipeline.commands import train
    from pipeline.errors import UserError
    from pipeline.train.recipes import get_recipe

    parser = build_parser()
    base = ["train", "--dataset", "synthetic", "--root", "x", "--preset", "demo"]
    recipe = train.build_recipe(parser.parse_args(base + ["--colour-shift", "0.15", "--epochs", "3",
                                                          "--sampler", "shuffle"]))
    demo = get_recipe("lightcnn-softlabel", "demo")
    assert recipe.train.augment.colour_shift == 0.15 and recipe.train.epochs == 3
    assert recipe.train.sampler == "shuffle"
    assert recipe.train.augment.rotation == demo.train.augment.rotation       # the rest of the preset kept
    assert train.build_recipe(parser.parse_args(base)).train.augment == demo.train.augment
    with pytest.raises(UserError, match="--colour-shift"):
        train.build_recipe(parser.parse_args(base + ["--colour-shift", "2"]))



def test_progressive_option_reaches_the_recipe_and_a_bad_one_writes_nothing(synth_root, tmp_path, capsys):
    from pipeline.cli import build_parser
    from pipeline.commands import train
    from pipeline.errors import UserError

    parser = build_parser()
    base = ["train", "--dataset", "synthetic", "--root", "x", "--preset", "demo"]
    demo = train.build_recipe(parser.parse_args(base)).train
    assert (demo.progressive_size, demo.progressive_epochs) == (40, 6)          # the demo preset's
    recipe = train.build_recipe(parser.parse_args(base + ["--progressive", "24:0.25"]))
    assert (recipe.train.progressive_size, recipe.train.progressive_fraction) == (24, 0.25)
    assert train.build_recipe(parser.parse_args(base + ["--progressive", "off"])).train.progressive_epochs == 0
    small = train.build_recipe(parser.parse_args(base + ["--image-size", "40"])).train   # not above 40: off
    assert small.progressive_size is None and "every epoch trains at 40 pixels" in capsys.readouterr().out
    kept = train.build_recipe(parser.parse_args(base + ["--image-size", "64"])).train
    assert kept.progressive_size == 40 and capsys.readouterr().out == ""
    chosen = train.build_recipe(parser.parse_args(base + ["--image-size", "32", "--progressive", "24:0.5"])).train
    assert (chosen.progressive_size, chosen.progressive_epochs) == (24, 6)
    for bad in ("32", "a:0.5", "32:x"):
        with pytest.raises(UserError, match="--progressive takes SIZE:FRACTION"):
            train.build_recipe(parser.parse_args(base + ["--progressive", bad]))

    db = tmp_path / "results.duckdb"   # a size the model's 16 px cannot take: refused before any file is made
    assert main(["train", "--dataset", "synthetic", "--root", str(synth_root), "--db", str(db), *LIGHT,
                 "--progressive", "16:0.5"]) == 2
    assert "smaller than the model's input size 16" in capsys.readouterr().err
    assert not db.exists() and not runs_dir_for(db).exists()
    run = _train(db, synth_root, "--progressive", "8:0.5")
    assert run["status"] == "complete"
    import json

    stored = run["config"] if isinstance(run["config"], dict) else json.loads(run["config"])
    assert (stored["recipe"]["train"]["progressive_size"], stored["recipe"]["train"]["progressive_fraction"]) == (8, 0.5)

def test_group_mitigation_run_records_its_groups(synth_root, tmp_path, capsys):
    import json

    from pipeline.data.loaders import load_dataset

    db = tmp_path / "results.duckdb"
    run = _train(db, synth_root, "--epochs", "1", "--group-balance", "sample", "--group-dro", "--groups", "race,gender")
    config = json.loads(run["config"]) if isinstance(run["config"], str) else run["config"]
    assert config["recipe"]["train"]["group_dro"] and config["recipe"]["train"]["group_balance"] == "sample"
    groups = config["groups"]
    assert groups["attributes"] == ["race", "gender"] and all(n.startswith("race=") for n in groups["names"])
    train_records = load_dataset("synthetic", synth_root, num_classes=6).split("train")
    assert sum(groups["train_counts"]) == len(train_records)
    assert main(["train", "--dataset", "synthetic", "--root", str(synth_root), "--db", str(db), *LIGHT,
                 "--group-dro", "--groups", "skin"]) != 0
    assert "group attributes must be among gender, race, age" in capsys.readouterr().err
    assert _newest_run(db, include_incomplete=True)["run_id"] == run["run_id"]   # no failed run left behind
