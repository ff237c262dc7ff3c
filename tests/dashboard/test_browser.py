"""A real browser (Debian's chromium via Playwright) against `streamlit run dashboard/app.py`.

Loads every page, applies filters through the UI and through the URL, checks
that no Streamlit exception box appears and that every chart draws a plot
area wider than 300 px with more than one tick or mark, walks thumbnail →
detail → shared URL, and saves screenshots to tests/artifacts/ (gitignored)
for a person to look at.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("", "Overview"), ("performance", "Performance"), ("errors", "Error explorer"),
         ("explanations", "Explanations"), ("fairness", "Fairness audit"), ("compare", "Compare runs"),
         ("export", "Export")]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(),
                       reason="Debian's chromium is not installed at /usr/bin/chromium "
                              "(tests/run_all.sh installs it: apt-get install -y chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(browser_store):
    """`streamlit run dashboard/app.py` on a free port against the store; killed in teardown."""
    port = _free_port()
    env = {**os.environ, "FER_RESULTS_DB": str(browser_store)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"streamlit exited with {proc.returncode}:\n{out}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("streamlit did not answer /_stcore/health within 120 s")
            time.sleep(0.5)
        yield url
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1800})
        pg = context.new_page()
        pg.set_default_timeout(90_000)
        try:
            yield pg
        finally:
            context.close()
            browser.close()


@pytest.fixture(scope="module")
def shot(browser_store):
    """Screenshot path prefixed with the store kind (pipeline / fake)."""
    kind = "fake" if "fake_store" in str(browser_store) else "pipeline"   # tmp dirs named by the fixtures
    return lambda name: str(ARTIFACTS / f"{kind}-{name}.png")


def _settle(pg, title: str) -> None:
    """Wait until the page's title shows and the script has finished running."""
    pg.get_by_role("heading", name=title, level=1).first.wait_for()
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')
    pg.wait_for_timeout(500)
    pg.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]')


def _exceptions(pg) -> list[str]:
    return [e.inner_text() for e in pg.query_selector_all('[data-testid="stException"]')]


@pytest.mark.parametrize("path,title", PAGES, ids=[t for _, t in PAGES])
def test_every_page_renders_without_exception(page, server, shot, path, title):
    page.goto(f"{server}/{path}")
    _settle(page, title)
    page.screenshot(path=shot(f"page-{path or 'overview'}"), full_page=True)
    assert _exceptions(page) == []
    assert page.locator('[data-testid="stSidebar"]').get_by_text("Run", exact=True).count() >= 1


def _match_count(pg) -> int:
    text = pg.get_by_role("heading", name=re.compile(r"images match")).first.inner_text()
    return int(text.split()[0].replace(",", ""))


def test_error_explorer_filter_changes_gallery_and_url(page, server, shot):
    page.goto(f"{server}/errors")
    _settle(page, "Error explorer")
    wrong_only = _match_count(page)
    page.get_by_text("all", exact=True).click()  # the Outcome radio: misclassified -> all
    page.wait_for_function("() => window.location.search.includes('outcome=all')")
    _settle(page, "Error explorer")
    everything = _match_count(page)
    assert everything > wrong_only
    assert _exceptions(page) == []
    assert page.locator('[data-testid="stImage"]').count() >= 4
    page.screenshot(path=shot("errors-filtered"), full_page=True)


def test_url_filters_restore_a_shared_view(page, server, shot):
    page.goto(f"{server}/errors?outcome=all&true=Happiness")
    _settle(page, "Error explorer")
    assert _exceptions(page) == []
    captions = page.locator('[data-testid="stImageCaption"]').all_inner_texts()
    gallery = [c for c in captions if "→" in c and c.startswith("test_")]
    assert gallery and all(": Happiness →" in c for c in gallery)
    page.screenshot(path=shot("errors-from-url"), full_page=True)


CHART_PAGES = [("performance", "Performance"), ("explanations", "Explanations"), ("fairness", "Fairness audit"),
               ("compare", "Compare runs")]
# The drawn extent of a Vega chart's data: its marks and grid lines (SVG renderer), and its tick labels.
_CHART_GEOMETRY = """el => {
  const boxes = Array.from(el.querySelectorAll('.role-mark, .role-axis-grid'))
    .map(g => g.getBoundingClientRect()).filter(r => r.width > 0 || r.height > 0);
  const left = Math.min(...boxes.map(r => r.left)), right = Math.max(...boxes.map(r => r.right));
  return {plot: boxes.length ? right - left : 0, ticks: el.querySelectorAll('.role-axis-label text').length,
          marks: el.querySelectorAll('.role-mark > *').length,
          title: (el.querySelector('.role-title-text') || {}).textContent || ''};
}"""


@pytest.fixture(scope="module")
def full_run(browser_store) -> str:
    """URL query selecting a run with every table filled (the fake store's newest run has no explanations)."""
    return "?run=20260101-000000-lightcnn-softlabel-aaaa" if "fake_store" in str(browser_store) else ""


@pytest.mark.parametrize("path,title", CHART_PAGES, ids=[t for _, t in CHART_PAGES])
def test_every_chart_draws_a_wide_plot_with_ticks(page, server, full_run, path, title):
    page.set_viewport_size({"width": 1600, "height": 1000})
    page.goto(f"{server}/{path}{full_run}")
    _settle(page, title)
    charts = page.locator('[data-testid="stVegaLiteChart"]')
    assert charts.count() >= 1
    for i in range(charts.count()):
        chart = charts.nth(i)
        chart.scroll_into_view_if_needed()
        chart.locator("svg .role-mark").first.wait_for(state="attached")
        geometry = chart.evaluate(_CHART_GEOMETRY)
        assert geometry["plot"] > 300, geometry
        assert geometry["ticks"] > 1 or geometry["marks"] > 1, geometry
    page.set_viewport_size({"width": 1400, "height": 1800})


def test_thumbnail_opens_detail_and_the_url_shares_it(page, server, shot):
    page.goto(f"{server}/errors?outcome=all")
    _settle(page, "Error explorer")
    caption = page.locator('[data-testid="stImageCaption"]').filter(has_text="→").nth(2).inner_text()
    image_id = caption.split(":")[0]
    page.get_by_role("button", name="Details").nth(2).click()
    page.wait_for_function(f"() => window.location.search.includes('img={image_id}')")
    _settle(page, "Error explorer")
    assert page.get_by_text("CAM for predicted", exact=False).count() >= 1
    shared = page.url
    assert "outcome=all" in shared and f"img={image_id}" in shared
    # A new page load is a new Streamlit session: only the URL carries the state.
    page.goto("about:blank")
    page.goto(shared)
    _settle(page, "Error explorer")
    # the detail view's big image is captioned with the id alone (a missing file says so)
    page.locator('[data-testid="stImageCaption"]').get_by_text(
        re.compile(rf"^{image_id}( \(image file missing\))?$")).wait_for()
    assert f"img={image_id}" in page.url
    page.screenshot(path=shot("errors-shared-detail"), full_page=True)


def test_pages_request_nothing_from_other_hosts(page, server):
    """A fresh load of every page fetches only from the dashboard's own server. A results browser bound to
    loopback must not tell another host that, or when, it is used, nor wait on one offline: a Material
    Symbols page icon made every load fetch its SVG from fonts.gstatic.com."""
    outside: dict[str, set[str]] = {}
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        for path, title in [*PAGES, ("twins", "Counterfactual twins")]:
            pg = context.new_page()
            pg.set_default_timeout(90_000)
            pg.on("request", lambda r, t=title: None if r.url.startswith((server, "data:", "blob:"))
                  else outside.setdefault(t, set()).add(r.url))
            pg.goto(f"{server}/{path}")
            _settle(pg, title)
            pg.wait_for_load_state("networkidle")
            pg.close()
    finally:
        context.close()
    assert outside == {}
