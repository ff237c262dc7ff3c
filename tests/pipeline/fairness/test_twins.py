"""The twins stage through the CLI: a tiny synthetic run's predictions on its test faces' twins."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.store import db as store
from pipeline.synth.faces import BALANCED, SynthConfig, generate_dataset


@pytest.fixture(scope="module")
def cue_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("twins")
    data, db = root / "data", root / "results.duckdb"
    generate_dataset(data, SynthConfig(n=80, seed=5, workers=1, test_fraction=0.4, bias="race=2:cue=Happiness",
                                       **BALANCED), progress=False)
    assert main(["train", "--dataset", "synthetic", "--root", str(data), "--db", str(db), "--epochs", "1",
                 "--image-size", "16", "--batch-size", "16", "--quiet", "--device", "cpu"]) == 0
    return db


def test_twins_stored_for_every_test_face_and_variant(cue_run, capsys):
    assert main(["twins", "--db", str(cue_run), "--run", "latest"]) == 0
    assert "skin twins of run" in capsys.readouterr().out
    with store.open_store(cue_run, read_only=True) as con:
        run = store.list_runs(con).iloc[0]
        twins = store.load_frame(con, "twin_predictions", run_id=run["run_id"])
        preds = store.load_frame(con, "predictions", run_id=run["run_id"]).query("split == 'test'")
    skin, cue = twins[twins["kind"] == "skin"], twins[twins["kind"] == "cue"]
    assert set(skin["image_id"]) == set(preds["image_id"]) and len(skin) == 3 * len(preds)
    assert set(cue["variant"]) == {"cue", "no cue"} and len(cue) == 2 * cue["image_id"].nunique() > 0
    assert (twins["correct"] == (twins["pred_label"] == twins["true_label"])).all()
    # the twin drawn as the face is the test image itself: the same prediction as the run's
    own = skin[skin["variant"] == skin["drawn_as"]].set_index("image_id")
    stored = preds.set_index("image_id").loc[own.index]
    assert np.allclose(np.stack(own["probs"]), np.stack(stored["probs"]), atol=1e-5)
    assert main(["twins", "--db", str(cue_run), "--kinds", "skin"]) == 0       # re-running replaces the rows
    with store.open_store(cue_run, read_only=True) as con:
        assert len(store.load_frame(con, "twin_predictions", run_id=run["run_id"], kind="skin")) == len(skin)


def test_twins_of_a_run_whose_data_is_gone_is_a_user_error(cue_run, tmp_path, capsys):
    import shutil

    db = tmp_path / "results.duckdb"
    shutil.copy(cue_run, db)
    with store.open_store(db) as con:
        con.execute("UPDATE runs SET dataset_root = ?", [str(tmp_path / "nowhere")])
    assert main(["twins", "--db", str(db)]) != 0
    assert "no longer at" in capsys.readouterr().err
