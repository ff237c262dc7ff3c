"""Fixtures for the dashboard tests: stores to point the app at, and an AppTest factory."""
from __future__ import annotations

from pathlib import Path

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
