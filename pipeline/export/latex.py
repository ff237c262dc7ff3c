"""LaTeX for papers: escaping, booktabs tables that fit the text width, and documents.

Pure: frames and strings in, LaTeX source out. The rules a journal expects:

- Every character typesets as written: `escape_latex` escapes LaTeX's specials
  (`\\ & % $ # _ { } ~ ^ < > |`; `|` is an em dash in LaTeX's default font
  encoding), writes a minus before a number as a real minus sign (`$-$`), an
  age range such as `0-3` with an en dash, and `×`, `–`, `≥`, `≤`, `†`, `±` as
  commands every engine knows.
- `to_latex` writes booktabs rules (needs `\\usepackage{booktabs}`) in a
  `table` float, or a `longtable` (needs `\\usepackage{longtable}`) that breaks
  across pages when the table has more than LONG_ROWS rows, so no table is
  ever a float taller than the page. Tables are set in `\\small`, or in
  `\\footnotesize` or `\\scriptsize` when their cells' estimated width needs it
  (`choose_size`), with narrow column padding; a table too wide even so puts
  each interval under its estimate. The table builders keep their columns few
  enough to fit a one-column article's text width (the export tests compile
  every table and fail on an overfull box).
- `PREAMBLE` lists the packages the tables and `main.tex` use; `to_document`
  wraps bodies in a complete, compilable document.
"""
from __future__ import annotations

import re

import pandas as pd

LONG_ROWS = 30          # more rows than this: a longtable, which breaks across pages
TABCOLSEP = "4pt"       # column padding (LaTeX's default is 6pt)
TEXT_WIDTH_PT = 345.0   # a one-column 10pt article's \textwidth
FIT_MARGIN = 0.97       # room for the estimate's error (about 1% on measured cells)
# Font sizes a table may be set in, largest first, with the width in pt of one em of
# estimate_width_em in each: measured with \settowidth on table cells; Computer Modern's
# smaller optical sizes are wider than a scaled 10pt, so \scriptsize gains little.
SIZES = ((r"\small", 9.25), (r"\footnotesize", 8.5), (r"\scriptsize", 8.0))

PACKAGES = ("booktabs", "longtable", "graphicx")
PREAMBLE = "\n".join([r"\documentclass[10pt]{article}", *(rf"\usepackage{{{p}}}" for p in PACKAGES)])

_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"$\$$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    # '$' as math: the text-mode \$ of the default font encoding is a bitmap (Type 3) font below 10pt.
    # Non-ASCII characters our tables produce, as commands any LaTeX engine knows.
    "×": r"$\times$", "–": "--", "—": "---", "−": "$-$", "≥": r"$\geq$", "≤": r"$\leq$",
    "†": r"$^{\dagger}$", "α": r"$\alpha$", "±": r"$\pm$",
}
# A hyphen that starts a number (after a space, a bracket or at the start) is a minus sign.
_MINUS = re.compile(r"(?:^|(?<=[\s\[(]))-(?=[0-9.])")
# A whole value like '0-3' or '40-69' is a range: an en dash.
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def escape_latex(text) -> str:
    """`text` with LaTeX's special characters escaped, to typeset as written (see the module docstring)."""
    text = str(text)
    text = _RANGE.sub(r"\1–\2", text)
    text = _MINUS.sub("−", text)
    return "".join(_SPECIALS.get(ch, ch) for ch in text)


def _label(label: str) -> str:
    # Labels are identifiers, not typeset text: keep only characters LaTeX accepts there.
    return "".join(ch for ch in str(label) if ch.isalnum() or ch in ":-.")


# A cell that reads as a number: '0.87 [0.83, 0.90]', '<0.001', '-0.02', '22†' (not '0-3' or '70+').
_NUMBERISH = re.compile(r"^(<|[-−]?)\d*\.?\d+(\s|\[|†|$)")


def _align(series: pd.Series) -> str:
    """'r' for numbers and for text cells that start with one (estimates, p-values), else 'l'."""
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return "r"
    texts = [str(v) for v in series if str(v) not in ("", "–")]
    return "r" if texts and all(_NUMBERISH.match(t) for t in texts) else "l"


# Widths of Computer Modern Roman glyphs in em (digits are 0.5 em); letters not listed are 0.5 em
# lower case and 0.72 em upper case. Close enough to choose a font size; the tests compile and check.
_GLYPH_EM = {**dict.fromkeys(" ", 0.333), **dict.fromkeys(".,:;![]()|'`", 0.278), **dict.fromkeys("il", 0.278),
             **dict.fromkeys("fjrt", 0.38), **dict.fromkeys("mw", 0.78), **dict.fromkeys("%&−×–MW@", 0.8),
             "-": 0.333, "†": 0.3}


def estimate_width_em(text: str) -> float:
    """The typeset width of `text` in em of its font (an estimate, see _GLYPH_EM), as escape_latex sets it."""
    text = _MINUS.sub("−", _RANGE.sub(r"\1–\2", str(text)))
    return sum(_GLYPH_EM.get(ch, 0.72 if ch.isupper() else 0.5) for ch in text)


def choose_size(header: list[str], rows: list[list[str]]) -> str | None:
    """The largest of SIZES in which a table of these cells (plain text, one line per '\\n') fits
    TEXT_WIDTH_PT, or None when none does."""
    def width(text: str) -> float:
        return max(estimate_width_em(line) for line in str(text).split("\n"))

    widths = [max([width(h), *(width(r[i]) for r in rows)]) for i, h in enumerate(header)]
    padding = 2 * float(TABCOLSEP.rstrip("pt")) * len(header)
    for size, pt in SIZES:
        if sum(widths) * pt + padding <= FIT_MARGIN * TEXT_WIDTH_PT:
            return size
    return None


# An estimate cell, '0.87 [0.83, 0.90]' (optionally followed by more): split before its interval.
_ESTIMATE = re.compile(r"^(\S+) (\[[^]]*\].*)$")


def _stack(text: str) -> str:
    """An estimate cell on two lines, its interval under it (for tables too wide for one line per cell)."""
    m = _ESTIMATE.match(text)
    return f"{m.group(1)}\n{m.group(2)}" if m else text


def _latex_cell(text: str) -> str:
    """One cell: escaped, guarded so a leading '[' is not read as the optional argument of the
    previous row's \\\\, and stacked in a nested tabular when it holds line breaks."""
    lines = [escape_latex(x) for x in str(text).split("\n")]
    lines = ["{}" + x if x.startswith("[") else x for x in lines]
    if len(lines) == 1:
        return lines[0]
    return r"\begin{tabular}[t]{@{}r@{}}" + r" \\ ".join(lines) + r"\end{tabular}"


def to_latex(df: pd.DataFrame, caption: str | None = None, label: str | None = None, *,
             cell=str, long: bool | None = None) -> str:
    """A booktabs table of `df`, every header and cell escaped.

    `cell` turns a value into text before escaping (the tables module passes its
    number formatter). With neither caption nor label, a short table is a bare
    tabular, to place yourself; otherwise a `table` float with caption and
    label. `long` (default: more than LONG_ROWS rows) makes it a `longtable`
    whose header repeats on every page.
    """
    align = "".join(_align(df[c]) for c in df.columns)
    header = " & ".join(_latex_cell(c) for c in df.columns) + r" \\"
    cells = [[cell(v) for v in row] for row in df.itertuples(index=False, name=None)]
    size = choose_size([str(c) for c in df.columns], cells)
    if size is None:  # too wide on one line per cell: intervals go under their estimates
        cells = [[_stack(c) for c in row] for row in cells]
        size = choose_size([str(c) for c in df.columns], cells) or SIZES[-1][0]
    body = [" & ".join(_latex_cell(c) for c in row) + r" \\" for row in cells]
    long = len(df) > LONG_ROWS if long is None else long
    caption_line = rf"\caption{{{escape_latex(caption)}}}" if caption is not None else ""
    label_line = rf"\label{{{_label(label)}}}" if label is not None else ""
    if long:
        head = (caption_line + label_line + r" \\") if (caption_line or label_line) else ""
        continued = (rf"\multicolumn{{{len(df.columns)}}}{{l}}{{\emph{{(continued)}}}} \\"
                     if caption_line else "")
        lines = [r"\begingroup", size, rf"\setlength{{\tabcolsep}}{{{TABCOLSEP}}}",
                 rf"\begin{{longtable}}{{{align}}}", *([head] if head else []),
                 r"\toprule", header, r"\midrule", r"\endfirsthead",
                 *([continued] if continued else []), r"\toprule", header, r"\midrule", r"\endhead",
                 r"\bottomrule", r"\endlastfoot", *body, r"\end{longtable}", r"\endgroup"]
        return "\n".join(lines) + "\n"
    tabular = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", header, r"\midrule", *body,
               r"\bottomrule", r"\end{tabular}"]
    if not caption_line and not label_line:
        return "\n".join(tabular) + "\n"
    # A caption above a table needs space below it (LaTeX's article leaves none).
    lines = [r"\begin{table}[htbp]", r"\centering", size, rf"\setlength{{\tabcolsep}}{{{TABCOLSEP}}}",
             r"\setlength{\belowcaptionskip}{4pt}",
             *([caption_line] if caption_line else []), *([label_line] if label_line else []),
             *tabular, r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_document(*bodies: str, title: str | None = None) -> str:
    """A complete document (PREAMBLE) holding `bodies` in order, each on its own paragraph."""
    lines = [PREAMBLE, r"\begin{document}"]
    if title:
        lines.append(rf"\section*{{{escape_latex(title)}}}")
    for body in bodies:
        lines += [body.rstrip("\n"), ""]
    lines.append(r"\end{document}")
    return "\n".join(lines) + "\n"
