"""Compile LaTeX with pdflatex and fail on what a journal would reject (shared by the export tests)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.export.latex import to_document

PDFLATEX = shutil.which("pdflatex")
PDFTOTEXT = shutil.which("pdftotext")
requires_pdflatex = pytest.mark.skipif(
    PDFLATEX is None, reason="pdflatex is not installed: tests/run_all.sh installs texlive-latex-base and "
                             "texlive-latex-recommended with apt-get when run as root")
requires_pdftotext = pytest.mark.skipif(
    PDFTOTEXT is None, reason="pdftotext is not installed: tests/run_all.sh installs poppler-utils with apt-get "
                              "when run as root")

# Log lines that mean the document does not print right: errors ('! Missing $ inserted' for an
# unescaped _, '! Extra alignment tab' for an unescaped &, ...), overfull lines and oversized floats.
PROBLEMS = ("! ", "Overfull \\hbox", "Float too large", "Missing character")


def compile_latex(folder: Path, main: str = "main.tex") -> str:
    """Run pdflatex on folder/main; assert it succeeded and its log names none of PROBLEMS. Returns the log."""
    proc = subprocess.run([PDFLATEX, "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape", main],
                          cwd=folder, capture_output=True, text=True, timeout=600)
    log_path = folder / Path(main).with_suffix(".log").name
    log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else proc.stdout
    lines = log.splitlines()
    problems = [f"{line} | {' '.join(lines[i + 1:i + 3])}" for i, line in enumerate(lines)
                if line.startswith(PROBLEMS) or "Float too large" in line]
    assert proc.returncode == 0 and not problems, f"pdflatex on {folder / main}: {problems or proc.stdout[-2000:]}"
    return log


def compile_body(folder: Path, body: str, name: str = "doc.tex") -> str:
    """Compile `body` (tables, ...) in the export's own preamble; see compile_latex."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(to_document(body), encoding="utf-8")
    return compile_latex(folder, name)


def pdf_text(pdf: Path) -> str:
    """The text of a PDF (pdftotext), whitespace removed so cells can be searched for.

    '~' and '^' are typeset as accents over nothing, which pdftotext reads as '˜' and 'ˆ'."""
    out = subprocess.run([PDFTOTEXT, str(pdf), "-"], capture_output=True, text=True, timeout=120, check=True).stdout
    return "".join(out.split()).replace("˜", "~").replace("ˆ", "^")
