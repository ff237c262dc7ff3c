"""Fault injection: the probes of a hostile user against copies of a real store (issue 10).

Every test works on a copy of the session's demo store (tests/conftest.py: 300
synthetic faces, 1 epoch, every stage) with its runs/ folder, so the earlier,
complete run is real. Processes are killed with SIGKILL or SIGTERM at stage
boundaries and inside the final write; stores are truncated, emptied,
overwritten, locked or put in a folder that cannot be written; a checkpoint is
replaced by a pickle whose `__reduce__` would create a file; the dashboard is
started from another folder and its listening sockets read from /proc/net; the
error explorer gets markdown payloads; a dataset gets a PNG whose header claims
30000x30000 pixels. Training is tiny (16 px, batch 16, a few epochs).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import duckdb
import pytest

from pipeline.cli import main
from pipeline.paths import PROJECT_ROOT, runs_dir_for
from pipeline.store import db as store

TINY = ["--recipe", "lightcnn-softlabel", "--batch-size", "16", "--image-size", "16", "--quiet", "--device", "cpu"]
MARKER = "pwned-by-checkpoint"


# ---------------------------------------------------------------- helpers


def _copy_store(demo_store: Path, dest: Path) -> Path:
    """The demo store and its runs/ folder, copied into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(demo_store, dest / demo_store.name)
    shutil.copytree(runs_dir_for(demo_store), runs_dir_for(dest / demo_store.name))
    return dest / demo_store.name


def _data_root(demo_store: Path) -> Path:
    return demo_store.parent / "data"


def _checksums(db: Path, run_ids: list[str] | None = None) -> dict[str, tuple]:
    """(rows, xor of row hashes) per table; run tables restricted to `run_ids` when given."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for table in store.TABLES:
            cols = {r[0] for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]).fetchall()}
            where, params = "", []
            if run_ids is not None and "run_id" in cols:
                where = f" WHERE run_id IN ({', '.join('?' for _ in run_ids)})"
                params = list(run_ids)
            out[table] = con.execute(f'SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM "{table}"{where}',
                                     params).fetchone()
        return out
    finally:
        con.close()


def _run_ids(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
    finally:
        con.close()


def _runs(db: Path) -> dict[str, dict]:
    with store.open_store(db, read_only=True) as con:
        return {r["run_id"]: r for r in store.list_runs(con, include_incomplete=True).to_dict("records")}


def _cli(*args: str, cwd: Path = PROJECT_ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", *args], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, proc: subprocess.Popen, what: str, limit_s: float = 300, poll_s: float = 0.02) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if proc.poll() is not None:
            output = (proc.stderr or proc.stdout).read()
            pytest.fail(f"the process ended (rc {proc.returncode}) before {what}: {str(output)[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(poll_s)


def _new_last_checkpoint(db: Path, before: set[str]):
    # Run folders already there (e.g. left by another test's stopped run in the shared demo
    # store's runs/) are not the new run's, whether or not the store lists them.
    before = set(before) | {p.name for p in runs_dir_for(db).glob("*") if p.is_dir()}

    def found() -> Path | None:
        for p in runs_dir_for(db).glob("*/last.pt"):
            if p.parent.name not in before:
                return p
        return None
    return found


def _train_args(db: Path, demo_store: Path, epochs: int) -> list[str]:
    return ["train", "--dataset", "synthetic", "--root", str(_data_root(demo_store)), "--db", str(db),
            "--epochs", str(epochs), *TINY]


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A torch-saved file whose unpickling would run `touch marker`."""
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"format": "fer-trust-checkpoint/1", "meta": Evil(), "state_dict": {}}, path)
    assert not marker.exists()
    return path


def _png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (1 + 3 * min(width, 4)))) + chunk(b"IEND", b""))


def _used_image(root: Path) -> Path:
    """The aligned file of the first train image the 6-class recipe uses (not Neutral, code 7)."""
    for line in (root / "EmoLabel" / "list_patition_label.txt").read_text().splitlines():
        name, code = line.split()
        if name.startswith("train_") and code != "7":
            return root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg")
    raise AssertionError("no usable train image")


@pytest.fixture
def copy_store(demo_store, tmp_path) -> Path:
    return _copy_store(demo_store, tmp_path / "store")


@pytest.fixture
def copy_data(demo_store, tmp_path) -> Path:
    """A copy of the demo's synthetic dataset, to damage."""
    root = tmp_path / "data"
    shutil.copytree(_data_root(demo_store), root)
    return root


# ---------------------------------------------------------------- kill -9, SIGTERM, resume


def test_kill_9_during_training_keeps_earlier_rows_and_resume_finishes(copy_store, demo_store):
    earlier = _run_ids(copy_store)
    before = _checksums(copy_store, earlier)
    last = _new_last_checkpoint(copy_store, set(earlier))
    proc = _popen(*_train_args(copy_store, demo_store, epochs=4))
    _wait_for(lambda: last() is not None, proc, "the first epoch's checkpoint")
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    run_id = last().parent.name

    assert store.find_damaged_tables(duckdb.connect(str(copy_store), read_only=True)) == {}
    assert _checksums(copy_store, earlier) == before
    assert _runs(copy_store)[run_id]["status"] == "running"
    listing = _cli("runs", "--all", "--db", str(copy_store))
    assert "stale" in listing.stdout and run_id in listing.stdout
    check = _cli("runs", "--check", "--db", str(copy_store))
    assert check.returncode == 1 and f"--resume {run_id}" in check.stdout

    assert main(["train", "--resume", run_id, "--db", str(copy_store), "--quiet"]) == 0
    assert _runs(copy_store)[run_id]["status"] == "complete"
    assert _checksums(copy_store, earlier) == before
    with store.open_store(copy_store, read_only=True) as con:
        assert store.load_frame(con, "epochs", run_id=run_id)["epoch"].tolist() == [1, 2, 3, 4]


def test_sigterm_marks_the_run_interrupted_and_names_resume(copy_store, demo_store):
    earlier = _run_ids(copy_store)
    last = _new_last_checkpoint(copy_store, set(earlier))
    proc = _popen(*_train_args(copy_store, demo_store, epochs=4))
    _wait_for(lambda: last() is not None, proc, "the first epoch's checkpoint")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    run_id = last().parent.name
    assert proc.returncode == 130, err
    assert f"--resume {run_id}" in err and "Traceback" not in err
    row = _runs(copy_store)[run_id]
    assert row["status"] == "interrupted" and f"--resume {run_id}" in row["error"]


def test_kill_9_inside_the_audit_write_leaves_the_store_whole(copy_store):
    others = [t for t in store.TABLES if t not in ("audits", "audit_cells", "audit_gaps", "proxy_agreement")]
    before = _checksums(copy_store)
    wal = Path(str(copy_store) + ".wal")
    proc = _popen("audit", "--run", "latest", "--db", str(copy_store), "--n-boot", "50", "--n-perm", "50")
    _wait_for(wal.exists, proc, "the audit's write", poll_s=0.001)
    proc.kill()
    proc.wait(timeout=60)
    with store.open_store(copy_store, read_only=True) as con:
        assert store.find_damaged_tables(con) == {}
    after = _checksums(copy_store)
    assert {t: after[t] for t in others} == {t: before[t] for t in others}
    assert main(["audit", "--run", "latest", "--db", str(copy_store), "--n-boot", "50", "--n-perm", "50"]) == 0


def test_train_failure_names_resume(copy_store, copy_data, capsys):
    # An image that cannot be decoded: the run fails after it was recorded, and says how to go on.
    victim = _used_image(copy_data)
    victim.write_bytes(b"not an image")
    assert main(["train", "--dataset", "synthetic", "--root", str(copy_data), "--db", str(copy_store),
                 "--epochs", "1", *TINY]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "--resume" in err
    failed = [r for r in _runs(copy_store).values() if r["status"] == "failed"]
    assert len(failed) == 1 and "--resume" in failed[0]["error"]


# ---------------------------------------------------------------- damaged, empty, foreign, locked, read-only stores


def test_truncated_store_is_refused_before_any_work(copy_store, demo_store, capsys, monkeypatch):
    size = copy_store.stat().st_size
    os.truncate(copy_store, size // 2)
    digest = hashlib.sha256(copy_store.read_bytes()).hexdigest()
    for argv in (["runs", "--db", str(copy_store)], ["audit", "--run", "latest", "--db", str(copy_store)],
                 ["export", "--run", "latest", "--table", "audit", "--db", str(copy_store)],
                 _train_args(copy_store, demo_store, epochs=1)):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "damaged" in err and "--salvage" in err and len(err.strip().splitlines()) == 1, err
    assert hashlib.sha256(copy_store.read_bytes()).hexdigest() == digest  # nothing was written

    assert main(["runs", "--check", "--db", str(copy_store)]) == 1
    assert "damaged" in capsys.readouterr().out
    salvaged = copy_store.parent / "salvaged.duckdb"
    assert main(["runs", "--db", str(copy_store), "--salvage", str(salvaged)]) == 0
    with store.open_store(salvaged, read_only=True) as con:
        assert store.find_damaged_tables(con) == {}

    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FER_RESULTS_DB", str(copy_store))
    at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=60).run()
    assert not at.exception
    assert any("damaged" in w.value for w in at.warning)


@pytest.mark.parametrize("content", [b"", os.urandom(64 * 1024)], ids=["zero-byte", "random"])
def test_empty_and_foreign_files_give_one_line(tmp_path, content, capsys):
    db = tmp_path / "results.duckdb"
    db.write_bytes(content)
    for argv in (["runs"], ["audit", "--run", "latest"], ["runs", "--check"]):
        assert main([*argv, "--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert "not a DuckDB database" in err and str(db) in err and len(err.strip().splitlines()) == 1
    assert db.read_bytes() == content


def _hold_lock(db: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
                             "print('open', flush=True); sys.stdin.readline()", str(db)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    return proc


def test_locked_store_waits_visibly_and_keeps_computed_rows(copy_store, capfd, monkeypatch):
    import pandas as pd

    monkeypatch.setattr(store, "WAIT_NOTICE_S", 0.1)
    run_id = _run_ids(copy_store)[0]
    holder = _hold_lock(copy_store)
    try:
        assert main(["runs", "--db", str(copy_store), "--timeout", "0.5"]) == 2  # a reader gives up, clearly
        assert "in use by another process" in capfd.readouterr().err
        threading.Timer(1.5, holder.stdin.close).start()  # the other process lets go later
        cells = pd.DataFrame({"split": ["test"], "attribute": ["gender"], "grp": ["probe"], "metric": ["accuracy"],
                              "n": [3], "value": [0.5], "low_support": [True]})
        assert store.replace_tables(copy_store, {"audit_cells": cells}, run_id=run_id, source="probe") == \
            {"audit_cells": 1}
    finally:
        holder.wait(timeout=60)
    err = capfd.readouterr().err
    assert "waiting for the results store" in err and "nothing computed is lost" in err


def test_rows_for_a_run_deleted_meanwhile_are_refused_and_orphans_removed(copy_store, capsys):
    import pandas as pd

    run_id = _run_ids(copy_store)[0]
    cells = pd.DataFrame({"split": ["test"], "attribute": ["gender"], "grp": ["x"], "metric": ["accuracy"],
                          "n": [3], "value": [0.5], "low_support": [True]})
    with store.open_store(copy_store) as con:
        store.delete_run(con, run_id)
    with pytest.raises(store.RunGoneError, match="was deleted"):
        store.replace_tables(copy_store, {"audit_cells": cells}, run_id=run_id, source="probe")
    with store.open_store(copy_store) as con:
        assert store.find_orphans(con) == {}
        # orphans left by an older version: reported by --check, removed by the next --delete
        con.execute("INSERT INTO epochs (run_id, epoch) VALUES ('gone-run', 1)")
    store.save_run(copy_store, _minimal_run("other"), {})
    assert main(["runs", "--check", "--db", str(copy_store)]) == 1
    assert "orphans  epochs: 1 rows" in capsys.readouterr().out
    assert main(["runs", "--delete", "other", "--db", str(copy_store)]) == 0
    assert "1 orphan rows" in capsys.readouterr().out
    with store.open_store(copy_store, read_only=True) as con:
        assert store.find_orphans(con) == {}


def _minimal_run(run_id: str) -> dict:
    import datetime as dt

    return {"run_id": run_id, "kind": "train", "dataset": "synthetic", "dataset_root": "/x", "dataset_fingerprint": "f",
            "is_synthetic": True, "recipe": "r", "model": "m", "classes": ["Fear"], "config": {}, "code_version": "t",
            "seed": 0, "device": "cpu", "started_at": dt.datetime(2026, 1, 1)}


def test_store_in_a_folder_that_cannot_be_written_is_refused_before_work(copy_store, capsys):
    folder = copy_store.parent
    shutil.rmtree(runs_dir_for(copy_store))
    digest = hashlib.sha256(copy_store.read_bytes()).hexdigest()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode != 0:
            pytest.skip("running as root without chattr: every folder is writable")
        undo = ["chattr", "-i", str(folder)]
    else:
        folder.chmod(0o555)
        undo = ["chmod", "755", str(folder)]
    try:
        assert main(["audit", "--run", "latest", "--db", str(copy_store)]) == 2
        err = capsys.readouterr().err
        assert "cannot be written" in err and str(folder) in err and len(err.strip().splitlines()) == 1
        assert main(["runs", "--db", str(copy_store)]) == 0  # reading still works
    finally:
        subprocess.run(undo, check=True)
    assert hashlib.sha256(copy_store.read_bytes()).hexdigest() == digest


# ---------------------------------------------------------------- malicious checkpoints


def test_malicious_checkpoint_never_runs(copy_store, demo_store, tmp_path, capsys):
    marker = tmp_path / MARKER
    run = _runs(copy_store)
    train_id = next(r for r, row in run.items() if row["kind"] == "train" and row["status"] == "complete")
    best = runs_dir_for(copy_store) / train_id / "best.pt"
    evaluate = ["evaluate", "--run", train_id, "--dataset", "synthetic", "--root", str(_data_root(demo_store)),
                "--db", str(copy_store), "--quiet", "--device", "cpu"]

    # 1. the run's own checkpoint replaced: its recorded SHA-256 no longer matches
    _evil_checkpoint(best, marker)
    assert main(evaluate) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err and not marker.exists()
    assert main(["explain", "--run", "latest", "--db", str(copy_store), "--limit", "2", "--quiet",
                 "--device", "cpu"]) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err and not marker.exists()
    # every stage that loads a run's model goes through the same check
    assert main(["twins", "--run", train_id, "--db", str(copy_store)]) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err and not marker.exists()
    assert main(["export-model", "--run", train_id, "--format", "onnx", "--out", str(tmp_path / "exported"),
                 "--db", str(copy_store)]) == 2
    assert "does not match the SHA-256" in capsys.readouterr().err and not marker.exists()

    # 2. the store points at a file outside its runs folder (with that file's checksum)
    outside = _evil_checkpoint(tmp_path / "elsewhere.pt", marker)
    shutil.rmtree(runs_dir_for(copy_store) / train_id)
    with store.open_store(copy_store) as con:
        con.execute("UPDATE runs SET checkpoint_path = ?, checkpoint_sha256 = ? WHERE run_id = ?",
                    [str(outside), hashlib.sha256(outside.read_bytes()).hexdigest(), train_id])
    assert main(evaluate) == 2
    assert "outside the store's runs folder" in capsys.readouterr().err and not marker.exists()

    # 3. a file the user passes is still unpickled weights-only
    assert main([*evaluate, "--checkpoint", str(outside)]) == 2
    assert "refused to load checkpoint" in capsys.readouterr().err and not marker.exists()

    # 4. --resume DIR with a crafted last.pt
    resume_dir = tmp_path / "resume-me"
    resume_dir.mkdir()
    _evil_checkpoint(resume_dir / "last.pt", marker)
    assert main(["train", "--resume", str(resume_dir), "--db", str(copy_store), "--quiet"]) == 2
    assert "refused to load checkpoint" in capsys.readouterr().err and not marker.exists()


# ---------------------------------------------------------------- the dashboard's address and markdown


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} give them) in state LISTEN on `port`."""
    found = []
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.append(address)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs /proc/net/tcp (Linux)")
def test_launcher_binds_loopback_from_another_folder(demo_store, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "--db", str(demo_store), "--port", str(port)],
                            cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        _wait_for(lambda: bool(_listening(port)), proc, "the dashboard to listen", limit_s=120)
        assert set(_listening(port)) <= LOOPBACK, _listening(port)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert _listening(port) == []


def test_app_refuses_a_non_loopback_address_without_the_opt_in(demo_store, monkeypatch):
    from streamlit import config
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FER_RESULTS_DB", str(demo_store))
    previous = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    try:
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=60).run()
        assert [e.value for e in at.error] and "Not serving" in at.error[0].value
        assert not at.selectbox  # nothing of the store is shown
        monkeypatch.setattr(sys, "argv", [sys.argv[0], "--expose-results-to-network"])
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=60).run()
        assert not at.error and at.selectbox(key="run").value
    finally:
        config.set_option("server.address", previous)


PAYLOADS = ["[Session expired - click here to log in](https://evil.example/login)",
            "**bold** $x^2$ :red[alarm]", "evil\u202egnp.exe"]


def test_markdown_payloads_render_escaped(copy_store, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from dashboard.widgets import escape_markdown

    run_id = next(r for r, row in _runs(copy_store).items() if row["kind"] == "train")
    with store.open_store(copy_store) as con:  # image ids as a hostile file name would make them
        ids = [r[0] for r in con.execute("SELECT image_id FROM predictions WHERE run_id = ? AND split = 'test' "
                                         "ORDER BY image_id LIMIT 3", [run_id]).fetchall()]
        for old, new in zip(ids, PAYLOADS):
            for table in ("predictions", "images", "heatmaps", "failure_tags"):
                con.execute(f'UPDATE "{table}" SET image_id = ? WHERE run_id = ? AND image_id = ?', [new, run_id, old])
        store.refresh_explorer(con, [run_id])  # raw SQL, not the store's writes: derive the explorer's rows again
    monkeypatch.setenv("FER_RESULTS_DB", str(copy_store))

    def errors_page(**params) -> AppTest:
        at = AppTest.from_file(str(PROJECT_ROOT / "dashboard" / "app.py"), default_timeout=60)
        at.query_params["run"] = run_id
        for k, v in params.items():
            at.query_params[k] = v
        at.run()
        at.switch_page("views/errors.py").run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    at = errors_page(img=PAYLOADS[0] + " (not an id)")
    text = " ".join(i.value for i in [*at.info, *at.warning])  # an unknown img= is a notice of what was ignored
    assert escape_markdown(PAYLOADS[0]) in text and "](https://" not in text

    at = errors_page(outcome="all", per_page="48")
    captions = [c for el in at.get("image") for c in el.captions]
    for payload in PAYLOADS:
        assert any(c.startswith(escape_markdown(payload)) for c in captions), payload
    rendered = " ".join(captions)
    assert "](https://" not in rendered and "**bold**" not in rendered and "\u202e" not in rendered


# ---------------------------------------------------------------- hostile images and labels


def test_decompression_bomb_is_a_clear_error_everywhere(copy_data, tmp_path, capsys):
    from dashboard import charts

    victim = _used_image(copy_data)
    victim.write_bytes(_png(30000, 30000))
    assert main(["inspect", "--dataset", "synthetic", "--root", str(copy_data), "--verify-images"]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "decompression bomb" in err and len(err.strip().splitlines()) == 1
    db = tmp_path / "bomb.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(copy_data), "--db", str(db), "--epochs", "1",
                 *TINY]) == 2
    assert "decompression bomb" in capsys.readouterr().err
    image, found = charts.load_image_rgb(str(victim))
    assert not found and image.shape[2] == 3


def test_tiny_images_and_undecoded_files_are_reported(copy_data, capsys):
    victim = _used_image(copy_data)
    from PIL import Image

    Image.new("RGB", (1, 1)).save(victim, format="JPEG")
    assert main(["inspect", "--dataset", "synthetic", "--root", str(copy_data)]) == 0
    out = capsys.readouterr().out
    assert "image files not decoded" in out
    assert "1 images smaller than 16 px" in out and f"{victim}: 1x1" in out
    # Training reads the same warning from the headers it decodes (not from a second pass).
    db = copy_data / "tiny.duckdb"
    assert main(["train", "--dataset", "synthetic", "--root", str(copy_data), "--db", str(db), "--epochs", "1",
                 *TINY]) == 0
    err = capsys.readouterr()
    assert f"1 images are smaller than 16 px on a side (used as they are), e.g. {victim} (1x1)" in err.out + err.err


def test_soft_labels_contradicting_hard_labels_are_reported_and_chosen(copy_data, capsys):
    from pipeline.constants import EMOTIONS
    from pipeline.data.loaders import load_dataset

    labels = (copy_data / "EmoLabel" / "list_patition_label.txt").read_text().splitlines()
    name, code = labels[0].split()
    other = 4 if int(code) != 4 else 3  # Happiness, or Disgust
    soft_file = copy_data / "EmoLabel" / "distribution_basic.txt"
    lines = soft_file.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, start=1) if line.split()[0] == name)
    lines[number - 1] = name + " " + " ".join("1.0000" if c == other else "0.0000" for c in range(1, 8))
    soft_file.write_text("\n".join(lines) + "\n")

    hard = load_dataset("synthetic", copy_data, num_classes=7)
    assert len(hard.label_conflicts) == 1 and hard.label_conflicts[0][0] == f"{soft_file}:{number}"
    record = next(r for r in hard.records if r.image_id == Path(name).stem)
    assert hard.classes[record.label] == EMOTIONS[int(code) - 1] and record.soft_label[record.label] == 1.0
    soft = load_dataset("synthetic", copy_data, num_classes=7, label_source="soft")
    record = next(r for r in soft.records if r.image_id == Path(name).stem)
    assert soft.classes[record.label] == EMOTIONS[other - 1]

    assert main(["inspect", "--dataset", "synthetic", "--root", str(copy_data)]) == 0
    out = capsys.readouterr().out
    assert "1 soft labels disagreeing" in out and f"{soft_file}:{number}" in out
