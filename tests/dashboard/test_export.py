"""Export: table formats, figure formats, file names, and the export page."""
from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from dashboard import charts, widgets

FRAME = pd.DataFrame({"group": ["female & co", "male_50%"], "accuracy": [0.81234, 0.7], "n": [120, 80]})


def test_csv_round_trips():
    text = widgets.export_table(FRAME, "csv").decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["group", "accuracy", "n"] and len(rows) == 3
    assert pd.read_csv(io.StringIO(text))["n"].tolist() == [120, 80]


def test_latex_is_booktabs_and_escaped():
    tex = widgets.export_table(FRAME, "tex", caption="Accuracy by group_x", label="tab:acc").decode()
    for rule in ("\\toprule", "\\midrule", "\\bottomrule"):
        assert tex.count(rule) == 1
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex
    assert "female \\& co" in tex and "male\\_50\\%" in tex
    assert "group\\_x" in tex


def test_markdown_table():
    md = widgets.export_table(FRAME, "md").decode().strip().splitlines()
    assert md[0].startswith("|") and "group" in md[0] and set(md[1]) <= set("|-: ")
    assert len(md) == 4


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="csv"):
        widgets.export_table(FRAME, "xls")


@pytest.fixture(scope="module")
def chart():
    confusion = pd.DataFrame({"true_label": ["Fear", "Fear", "Anger"], "pred_label": ["Fear", "Anger", "Anger"],
                              "n": [5, 2, 7]})
    return charts.create_confusion_chart(confusion, ["Fear", "Anger"])


def test_figures_export_to_svg_png_pdf(chart):
    svg = charts.export_chart(chart, "svg")
    assert svg.lstrip().startswith(b"<svg") and b"</svg>" in svg
    assert charts.export_chart(chart, "png").startswith(b"\x89PNG\r\n\x1a\n")
    pdf = charts.export_chart(chart, "pdf")
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-1024:]


def test_file_names_say_run_and_view():
    name = widgets.create_file_name("20260101-000000-lightcnn-aaaa", "audit gender×emotion / accuracy", "tex")
    assert name.startswith("20260101-000000-lightcnn-aaaa__") and name.endswith(".tex")
    assert "/" not in name and " " not in name and "gender" in name and "accuracy" in name


def test_export_page_lists_every_table_and_figure(make_app, app_store):
    at = make_app(app_store).run()
    at.switch_page("views/export.py").run()
    assert not at.exception, [e.value for e in at.exception]
    heads = [s.value for s in at.subheader]
    n_tables = int(heads[0].split("(")[1].rstrip(")"))
    n_figures = int(heads[1].split("(")[1].rstrip(")"))
    assert n_tables >= 5 and n_figures >= 5
    assert len(at.download_button) == 3 + 3 + 1  # the picked table's and figure's formats, the paper kit
    table_picker, figure_picker = at.selectbox(key="export-table"), at.selectbox(key="export-figure")
    assert len(table_picker.options) == n_tables and len(figure_picker.options) == n_figures
    for view in list(figure_picker.options)[:3]:  # every figure picked offers its three formats
        figure_picker.set_value(view).run()
        assert not at.exception, [e.value for e in at.exception]
        names = [b.proto.label for b in at.download_button]
        assert names[-3:] == ["SVG", "PNG", "PDF"]
