"""LaTeX for papers: escaping, booktabs tables that fit the text width, and documents.

Pure: frames and strings in, LaTeX source out. The rules a journal expects:

- Every character typesets as written: `escape_latex` escapes LaTeX's specials
  (`\\ & % $ # _ { } ~ ^ < > |`; `|` is an em dash in LaTeX's default font
  encoding), writes a minus before a number as a real minus sign (`$-$`), an
  age range such as `0-3` with an en dash, and `×`, `–`, `≥`, `≤`, `†` as
  commands every engine knows.
- `to_latex` writes booktabs rules (needs `\\usepackage{booktabs}`) in a
  `table` float, or a `longtable` (needs `\\usepackage{longtable}`) that breaks
  across pages when the table has more than LONG_ROWS rows, so no table is
  ever a float taller than the page. Tables are set in `\\small` (wide ones
  in `\\footnotesize`) with narrow column padding; the table builders keep
  their columns few enough to fit a one-column article's text width (the
  export tests compile every table and fail on an overfull box).
- `PREAMBLE` lists the packages the tables and `main.tex` use; `to_document`
  wraps bodies in a complete, compilable document.
"""
from __future__ import annotations

import re

import pandas as pd

LONG_ROWS = 30          # more rows than this: a longtable, which breaks across pages
TABCOLSEP = "4pt"       # column padding (LaTeX's default is 6pt)
WIDE_COLUMNS = 7        # tables with this many columns or more are set in \footnotesize, others in \small

PACKAGES = ("booktabs", "longtable", "graphicx")
PREAMBLE = "\n".join([r"\documentclass[10pt]{article}", *(rf"\usepackage{{{p}}}" for p in PACKAGES)])

_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"$\$$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    # '$' as math: the text-mode \$ of the default font encoding is a bitmap (Type 3) font below 10pt.
    # Non-ASCII characters our tables produce, as commands any LaTeX engine knows.
    "×": r"$\times$", "–": "--", "—": "---", "−": "$-$", "≥": r"$\geq$", "≤": r"$\leq$",
    "†": r"$^{\dagger}$", "α": r"$\alpha$",
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
    header = " & ".join(escape_latex(c) for c in df.columns) + r" \\"
    body = [" & ".join(escape_latex(cell(v)) for v in row) + r" \\"
            for row in df.itertuples(index=False, name=None)]
    long = len(df) > LONG_ROWS if long is None else long
    size = r"\footnotesize" if len(df.columns) >= WIDE_COLUMNS else r"\small"
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
