"""Fixtures for the dashboard tests: stores to point the app at, and an AppTest factory."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from tests.dashboard.fake_store import create_fake_store

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"


@pytest.fixture(scope="session")
def fake_store(tmp_path_factory) -> Path:
    """A fake store written straight from schema.sql: 2 complete runs (300 + 100 predictions) and a running one."""
    root = tmp_path_factory.mktemp("fake_store")
    return create_fake_store(root / "results.duckdb", n_predictions=300, image_dir=root / "images")


@pytest.fixture
def make_app(monkeypatch):
    """AppTest of the entry script against a given store path."""
    from streamlit.testing.v1 import AppTest

    def _make(db: Path | str) -> AppTest:
        monkeypatch.setenv("FER_RESULTS_DB", str(db))
        return AppTest.from_file(str(APP), default_timeout=60)

    return _make


def open_page(make_app, store: Path, page_script: str, **params):
    """Run the app on `store` with these URL query parameters, switch to `page_script`
    (e.g. "views/errors.py"), and check that no exception was shown."""
    at = make_app(store)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(page_script).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


_SEPARATOR_ROW = re.compile(r"\|(:?-+:?\|)+")
_CELL_BORDER = re.compile(r"(?<!\\)\|")  # a pipe that is not escaped


def read_markdown_table(text: str) -> pd.DataFrame | None:
    """The frame a markdown table of `widgets.create_markdown_table` shows (None if `text` is no table):
    cells unescaped, columns whose every non-empty cell is a number read as numbers, empty cells NaN."""
    lines = text.strip().splitlines()
    if len(lines) < 2 or not _SEPARATOR_ROW.fullmatch(lines[1].strip()):
        return None

    def cells(line: str) -> list[str]:
        return [re.sub(r"\\(.)", r"\1", c.strip()) for c in _CELL_BORDER.split(line.strip()[1:-1])]

    df = pd.DataFrame([cells(line) for line in lines[2:]], columns=cells(lines[0]))
    for column in df.columns:
        values = df[column].replace("", None)
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.notna().sum() == values.notna().sum():
            df[column] = numbers
        else:
            df[column] = values
    return df


def read_tables(at) -> list[pd.DataFrame]:
    """Every table a page shows: its markdown tables (`widgets.render_table`'s plain view), then its data
    grids, each in page order."""
    tables = [read_markdown_table(m.value) for m in at.markdown]
    return [t for t in tables if t is not None] + [d.value for d in at.dataframe]


@pytest.fixture(scope="session")
def pipeline_store(demo_store) -> Path:
    """A store made by the real pipeline (tests/conftest.py: `demo` on 300 faces, 1 epoch)."""
    return demo_store


STORES = ["pipeline", "fake"]


@pytest.fixture(scope="session", params=STORES)
def browser_store(request) -> Path:
    """The stores the browser test serves: one made by the pipeline, and the fake one (every table filled)."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session", params=STORES)
def app_store(request) -> Path:
    """The stores every page is run against in AppTest: made by the real pipeline, and the fake one."""
    return request.getfixturevalue(f"{request.param}_store")
