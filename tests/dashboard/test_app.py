"""The entry script: store resolution, store problems as help pages, every page from st.navigation."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from dashboard import queries

PAGES = ["overview", "performance", "errors", "explanations", "fairness", "compare", "export"]
TITLES = {"overview": "Overview", "performance": "Performance", "errors": "Error explorer",
          "explanations": "Explanations", "fairness": "Fairness audit", "compare": "Compare runs",
          "export": "Export"}


@pytest.mark.parametrize("page", PAGES)
def test_every_page_runs_without_exception(make_app, app_store, page):
    at = make_app(app_store).run()
    at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    assert [t.value for t in at.title] == [TITLES[page]]
    assert at.selectbox(key="run").value in queries.load_runs(queries.create_store_ref(app_store))["run_id"].tolist()


def test_only_complete_runs_are_offered(make_app, fake_store):
    at = make_app(fake_store).run()
    options = at.selectbox(key="run").options
    assert len(options) == 2
    assert not any("cccc" in o for o in options)  # the 'running' run stays hidden


def test_synthetic_run_shows_a_banner(make_app, fake_store):
    at = make_app(fake_store)
    at.query_params["run"] = "20260101-000000-lightcnn-softlabel-aaaa"
    at.run()
    assert any("synthetic" in w.value for w in at.warning)
    at.selectbox(key="run").set_value("20260102-000000-resnet50-transfer-bbbb").run()
    assert not any("synthetic" in w.value for w in at.warning)
    assert at.query_params["run"] == "20260102-000000-resnet50-transfer-bbbb"


def test_overview_headline_gives_accuracy_with_its_wilson_interval(make_app, app_store):
    from statsmodels.stats.proportion import proportion_confint

    from tests.dashboard.conftest import read_markdown_table

    at = make_app(app_store).run()
    run = queries.load_runs(queries.create_store_ref(app_store)).set_index("run_id").loc[at.selectbox(key="run").value]
    headline = next(t for t in (read_markdown_table(m.value) for m in at.markdown)
                    if t is not None and "Macro F1" in t.columns).iloc[0]
    n = int(run["n_test"])
    lo, hi = proportion_confint(round(run["test_accuracy"] * n), n, method="wilson")
    assert headline["Test accuracy [95% CI]"] == f"{run['test_accuracy']:.1%} [{lo:.1%}, {hi:.1%}]"
    assert headline["Macro F1"] == pytest.approx(run["test_macro_f1"], abs=5e-4)
    assert str(headline["Test images"]) == f"{n:,}"


def test_overview_gives_the_seed_spread_of_a_run_with_replicas(make_app, seed_store, fake_store):
    from pipeline.export.tables import format_spread
    from pipeline.store import db as store
    from pipeline.train.seeds import compute_seed_spread

    with store.open_store(seed_store, read_only=True) as con:
        want = compute_seed_spread(store.list_runs(con)).iloc[0]
    for run_id in want["run_ids"].split(", "):  # either replica, picked in the sidebar
        at = make_app(seed_store)
        at.query_params["run"] = run_id
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        line = next(c.value for c in at.caption if c.value.startswith("This recipe over seeds"))
        assert "seeds 0, 1 " in line and format_spread(want["accuracy_mean"], want["accuracy_sd"],
                                                       want["accuracy_min"], want["accuracy_max"]) in line
    at = make_app(fake_store).run()
    assert not any(c.value.startswith("This recipe over seeds") for c in at.caption)


def test_headline_of_a_run_without_an_evaluation_says_so():
    from dashboard.widgets import describe_headline

    row = describe_headline({"test_accuracy": None, "n_test": float("nan"), "test_macro_f1": None}, 7)
    assert row.splitlines()[-1] == "| — | — | — | 7 |"
    row = describe_headline({"test_accuracy": 0.5, "n_test": None, "test_macro_f1": 0.25}, 6)
    assert row.splitlines()[-1] == "| 50.0% | 0.250 | — | 6 |"  # no n: no interval


def test_missing_store_shows_what_to_run(make_app, tmp_path):
    at = make_app(tmp_path / "nowhere.duckdb").run()
    assert not at.exception
    assert any("No results store" in w.value for w in at.warning)
    assert any("python -m pipeline demo" in c.value for c in at.code)
    at.switch_page("views/fairness.py").run()
    assert not at.exception
    assert any("python -m pipeline demo" in c.value for c in at.code)


def test_empty_store_shows_what_to_run(make_app, tmp_path):
    from pipeline.store.db import open_store

    db = tmp_path / "empty.duckdb"
    with open_store(db):
        pass
    at = make_app(db).run()
    assert not at.exception
    assert any("no complete run" in w.value for w in at.warning)


def test_old_schema_store_says_so(make_app, tmp_path):
    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute("INSERT INTO meta VALUES ('schema_version', '0')")
    con.execute("CREATE TABLE runs (run_id VARCHAR, status VARCHAR)")
    con.close()
    at = make_app(db).run()
    assert not at.exception
    assert any("another version" in w.value for w in at.warning)
    assert any("mv " in c.value for c in at.code)


def test_not_a_duckdb_file_is_explained(make_app, tmp_path):
    db = tmp_path / "text.duckdb"
    db.write_text("not a database")
    at = make_app(db).run()
    assert not at.exception
    assert at.warning


def test_writer_holding_the_lock_gives_a_friendly_message(make_app, fake_store, tmp_path):
    import shutil

    db = tmp_path / "locked.duckdb"
    shutil.copy(fake_store, db)
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import duckdb, sys, time
            con = duckdb.connect({str(db)!r})
            print("locked", flush=True)
            sys.stdin.read()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        at = make_app(db).run()
        assert not at.exception
        assert any("pipeline is writing" in i.value for i in at.info)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    at.run()  # the writer is gone: the same session now shows the page
    assert not at.exception
    assert [t.value for t in at.title] == ["Overview"]


def test_db_argument_wins_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_RESULTS_DB", str(tmp_path / "env.duckdb"))
    assert queries.resolve_db_path(["--db", str(tmp_path / "arg.duckdb")]) == tmp_path / "arg.duckdb"
    assert queries.resolve_db_path([f"--db={tmp_path / 'b.duckdb'}"]) == tmp_path / "b.duckdb"
    assert queries.resolve_db_path([]) == tmp_path / "env.duckdb"
    monkeypatch.delenv("FER_RESULTS_DB")
    # Without either, the README's default: results.duckdb at the project root (the pipeline's default too).
    root = Path(__file__).resolve().parents[2]
    code = "from dashboard import queries; print(queries.resolve_db_path([]))"
    env = {k: v for k, v in os.environ.items() if k != "FER_RESULTS_DB"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    assert Path(out.stdout.strip()) == root / "results.duckdb"


def test_markdown_tables_show_every_cell_as_typed():
    import numpy as np
    import pandas as pd

    from dashboard import widgets
    from tests.dashboard.conftest import read_markdown_table

    df = pd.DataFrame({"image_id": ["a|b", "[x](http://e.com)", "**bold** $x$ \u202eevil"],
                       "f1": [0.12345, np.nan, -1.0], "n": [3, 4, 5]})
    text = widgets.create_markdown_table(df)
    assert "\\[x\\]\\(http" in text and "\\*\\*bold" in text and "\u202e" not in text  # no link, emphasis, override
    shown = read_markdown_table(text)
    assert shown.columns.tolist() == ["image_id", "f1", "n"]
    assert shown["image_id"].tolist() == ["a|b", "[x](http://e.com)", "**bold** $x$ U+202Eevil"]
    assert shown["f1"].tolist()[0] == 0.123 and np.isnan(shown["f1"].tolist()[1]) and shown["n"].tolist() == [3, 4, 5]
    assert text.splitlines()[1] == "|:---|---:|---:|"  # numbers right-aligned


def test_image_keys_follow_everything_an_image_is_drawn_from(tmp_path):
    import os

    import numpy as np

    from dashboard import widgets

    face = tmp_path / "face.jpg"
    face.write_bytes(b"one")
    cam = np.linspace(0, 1, 49, dtype=np.float32).reshape(7, 7)
    key = widgets.create_image_key("thumb", str(face), cam, None, alpha=0.5)
    assert widgets.create_image_key("thumb", str(face), cam.copy(), None, alpha=0.5) == key  # same content
    assert widgets.create_image_key("thumb", str(face), cam, None, alpha=0.6) != key
    assert widgets.create_image_key("thumb", str(face), cam * 0.5, None, alpha=0.5) != key
    assert widgets.create_image_key("thumb", str(face), None, cam, alpha=0.5) != key  # the other side
    face.write_bytes(b"other")  # a changed file (size and mtime) is drawn again
    os.utime(face, ns=(1, 1))
    assert widgets.create_image_key("thumb", str(face), cam, None, alpha=0.5) != key
    face.unlink()
    assert widgets.create_image_key("thumb", str(face), cam, None, alpha=0.5)[1] == (str(face), None)
