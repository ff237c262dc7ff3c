"""Entry script of the dashboard: `python -m dashboard [--db PATH]` (or `streamlit run dashboard/app.py [-- --db PATH]`).

Puts the project root on sys.path (so `pipeline` and `dashboard` import when
Streamlit runs this file directly), resolves and checks the store, draws the run and demographic-source
pickers in the sidebar once for every page, declares the
pages with `st.navigation` (page modules live in dashboard/views/: a folder named
pages/ beside the entry script would switch Streamlit to its legacy
auto-discovered multipage mode, under which AppTest runs page files directly,
bypassing this script), and turns the two expected conditions — no usable
store, and the pipeline holding the write lock — into helpful pages instead of
tracebacks.

It serves only on this machine: when Streamlit is bound to anything but a
loopback address (e.g. `streamlit run` started from another folder, where the
project's .streamlit/config.toml is not read and Streamlit listens on every
interface), it shows one line saying why and nothing of the store, unless the
user passes `-- --expose-results-to-network`, which says what it does: anyone
who can reach the port can read every result.
"""
from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import queries, widgets  # noqa: E402

SIDEBAR_PX = 400  # wide enough for a whole run id in the run picker
PAGES_DIR = Path(__file__).resolve().parent / "views"
# Navigation links without icons: on a scratch page, eight Material Symbols icons cost 0.11-0.17x of a bare
# page's fresh load (docs/design-notes.md, "Dashboard rendering"; on the dashboard, within the noise).
PAGES = [
    ("overview.py", "Overview"),
    ("performance.py", "Performance"),
    ("errors.py", "Error explorer"),
    ("explanations.py", "Explanations"),
    ("fairness.py", "Fairness audit"),
    ("compare.py", "Compare runs"),
    ("twins.py", "Counterfactual twins"),
    ("export.py", "Export"),
]


EXPOSE_FLAG = "--expose-results-to-network"


def is_loopback(address: str | None) -> bool:
    """Whether a server address binds this machine only (unset or empty means every interface)."""
    if not address:
        return False
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def refuses_to_serve(address: str | None, argv: list[str]) -> bool:
    """True when the server is reachable from other machines and the user did not opt in."""
    return not is_loopback(address) and EXPOSE_FLAG not in argv


def main() -> None:
    # An emoji page icon is drawn in the browser; a `:material/` one is fetched from fonts.gstatic.com on every
    # load, which would tell Google when the results are browsed (tests/dashboard/test_browser.py).
    st.set_page_config(page_title="FER results", page_icon="🙂", layout="wide",
                       initial_sidebar_state=SIDEBAR_PX)
    address = st.get_option("server.address")
    if refuses_to_serve(address, sys.argv[1:]):
        st.error(f"Not serving the results: this server listens on {address or 'every network interface'}, "
                 f"so other machines could read them. Start it with `python -m dashboard` (127.0.0.1 only), or "
                 f"pass `-- {EXPOSE_FLAG}` to `streamlit run` if you mean to share them.")
        st.stop()
    pages = [st.Page(PAGES_DIR / name, title=title, default=(i == 0))
             for i, (name, title) in enumerate(PAGES)]
    page = st.navigation(pages)
    db_path = queries.resolve_db_path()
    ref = queries.create_store_ref(db_path)
    try:
        with queries.read_batch(ref):  # one read-only connection at most, closed when this run ends
            status = queries.load_store_status(ref)
            if status.state != "ok":
                widgets.render_store_problem(status, str(db_path))
                return
            widgets.start_url_notices(st.container())  # URL values that do not apply, said at the top
            st.session_state["page_context"] = widgets.render_run_context(ref)  # the sidebar pickers, once
            page.run()
    except queries.StoreBusyError:
        st.info("The pipeline is writing to the results store; refresh in a moment.")
        if st.button("Refresh"):
            st.rerun()


main()
