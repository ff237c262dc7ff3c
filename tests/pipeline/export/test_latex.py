"""LaTeX that prints right: escaping, minus signs, longtables, and pdflatex compiles without overfull boxes."""
from __future__ import annotations

import pandas as pd
import pytest

from pipeline.export import latex
from tests.pipeline.export.latex_check import compile_body, pdf_text, requires_pdflatex, requires_pdftotext


@pytest.mark.parametrize("text, expected", [
    ("-0.12 [-0.20, 0.05]", "$-$0.12 [$-$0.20, 0.05]"),
    ("(-1)", "($-$1)"),
    ("0-3", "0--3"),
    ("40-69", "40--69"),
    ("African-American", "African-American"),
    ("20260101-000000-lightcnn", "20260101-000000-lightcnn"),
    ("female | Anger", r"female \textbar{} Anger"),
    ("gender×race", r"gender$\times$race"),
    ("50% & co_#1 $5", r"50\% \& co\_\#1 $\$$5"),
    ("{x} back\\slash ~^ <3>", r"\{x\} back\textbackslash{}slash \~{}\^{} \textless{}3\textgreater{}"),
    ("12†", r"12$^{\dagger}$"),
])
def test_escape_latex(text, expected):
    assert latex.escape_latex(text) == expected


def test_short_table_is_a_captioned_labelled_float():
    df = pd.DataFrame({"group": ["a", "b"], "accuracy": ["0.87 [0.83, 0.90]", "-0.10 [-0.20, 0.00]"]})
    text = latex.to_latex(df, "Accuracy by group_1", "tab:x_1")
    assert text.startswith(r"\begin{table}[htbp]") and r"\caption{Accuracy by group\_1}" in text
    assert r"\label{tab:x1}" in text and r"\begin{tabular}{lr}" in text
    assert "$-$0.10 [$-$0.20, 0.00]" in text


def test_long_table_is_a_longtable_with_repeated_head():
    df = pd.DataFrame({"group": [f"g{i}" for i in range(latex.LONG_ROWS + 1)], "n": range(latex.LONG_ROWS + 1)})
    text = latex.to_latex(df, "Long", "tab:long")
    assert r"\begin{table}" not in text and r"\begin{longtable}{lr}" in text
    head, rest = text.split(r"\endfirsthead")
    assert r"\caption{Long}\label{tab:long} \\" in head
    assert rest.split(r"\endhead")[0].count("group & n") == 1  # the head repeats on every page
    assert text.count(r"\\") > latex.LONG_ROWS
    assert latex.to_latex(df.head(3), "Short", long=True).count(r"\begin{longtable}") == 1


@requires_pdflatex
def test_checker_fails_on_unescaped_specials_and_overfull_lines(tmp_path):
    """The compile check can fail: raw specials and a too-wide table are caught."""
    from tests.pipeline.export.latex_check import compile_latex

    for i, body in enumerate([r"\begin{tabular}{ll} a_b & c \\ \end{tabular}",       # '_' outside math
                              r"\begin{tabular}{ll} a & b & c \\ \end{tabular}",     # '&' in a value
                              r"\begin{tabular}{l} #1 \\ \end{tabular}",             # '#'
                              r"\begin{tabular}{l}" + " wide" * 120 + r" \\ \end{tabular}"]):
        with pytest.raises(AssertionError):
            compile_body(tmp_path / f"bad{i}", body)
    (tmp_path / "float").mkdir()
    rows = "\n".join(rf"r{i} \\" for i in range(120))
    (tmp_path / "float" / "main.tex").write_text(latex.to_document(
        r"\begin{table}\begin{tabular}{l}" + rows + r"\end{tabular}\end{table}"))
    with pytest.raises(AssertionError, match="Float too large"):
        compile_latex(tmp_path / "float")


HOSTILE = pd.DataFrame({"group": ["50% & co_#1", "[$5] {x}", "back\\slash", "a | b ~^ <3>"],
                        "estimate": ["0.87 [0.83, 0.90]", "-0.05 [-0.10, 0.01]", "0.50 [0.40, 0.60]", "–"]})


@requires_pdflatex
def test_hostile_values_compile_and_print_as_written(tmp_path):
    compile_body(tmp_path, latex.to_latex(HOSTILE, "Hostile names: 100% & _#$", "tab:hostile"))


@requires_pdflatex
@requires_pdftotext
def test_hostile_values_print_as_written(tmp_path):
    compile_body(tmp_path, latex.to_latex(HOSTILE, "Hostile names: 100% & _#$", "tab:hostile"))
    text = pdf_text(tmp_path / "doc.pdf")
    # pdftotext drops the rule that LaTeX draws for an escaped '_'; every other character is extracted.
    for value in ("50%&co_#1", "[$5]{x}", "back\\slash", "a|b", "<3>", "100%&_#$"):
        assert value.replace("_", "") in text, value
    assert "−0.05[−0.10,0.01]" in text  # real minus signs (U+2212), not hyphens
    assert "-0.05" not in text


def _wide(n_estimates: int) -> pd.DataFrame:
    return pd.DataFrame({"gender": ["female"] * 3, "race": ["African-American"] * 3, "n": ["132†"] * 3,
                         **{f"metric {i}": ["-0.21 [-0.15, 0.29]"] * 3 for i in range(n_estimates)}})


def test_wider_tables_get_smaller_fonts_then_stacked_intervals():
    def layout(k):
        text = latex.to_latex(_wide(k), "Wide")
        return next(s for s, _ in latex.SIZES if s in text), r"\begin{tabular}[t]{@{}r@{}}" in text

    assert layout(1) == (r"\small", False)
    assert layout(6) == (r"\scriptsize", True)
    stacked = latex.to_latex(_wide(6), "Wide")
    assert r"\begin{tabular}[t]{@{}r@{}}$-$0.21 \\ {}[$-$0.15, 0.29]\end{tabular}" in stacked


@requires_pdflatex
@pytest.mark.parametrize("n_estimates", [2, 3, 4])
def test_wider_tables_still_fit_the_text_width(tmp_path, n_estimates):
    compile_body(tmp_path, latex.to_latex(_wide(n_estimates), "Wide", "tab:wide"))
