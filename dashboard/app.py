"""Entry script of the dashboard: `streamlit run dashboard/app.py [-- --db PATH]`.

Puts the project root on sys.path (so `pipeline` and `dashboard` import when
Streamlit runs this file directly), resolves and checks the store, draws the run and demographic-source
pickers in the sidebar once for every page, declares the
pages with `st.navigation` (page modules live in dashboard/views/: a folder named
pages/ beside the entry script would switch Streamlit to its legacy
auto-discovered multipage mode, under which AppTest runs page files directly,
bypassing this script), and turns the two expected conditions — no usable
store, and the pipeline holding the write lock — into helpful pages instead of
tracebacks.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from dashboard import queries, widgets  # noqa: E402

SIDEBAR_PX = 400  # wide enough for a whole run id in the run picker
PAGES_DIR = Path(__file__).resolve().parent / "views"
PAGES = [
    ("overview.py", "Overview", ":material/home:"),
    ("performance.py", "Performance", ":material/monitoring:"),
    ("errors.py", "Error explorer", ":material/image_search:"),
    ("explanations.py", "Explanations", ":material/visibility:"),
    ("fairness.py", "Fairness audit", ":material/balance:"),
    ("compare.py", "Compare runs", ":material/compare_arrows:"),
    ("export.py", "Export", ":material/download:"),
]


def main() -> None:
    st.set_page_config(page_title="FER results", page_icon=":material/face:", layout="wide",
                       initial_sidebar_state=SIDEBAR_PX)
    pages = [st.Page(PAGES_DIR / name, title=title, icon=icon, default=(i == 0))
             for i, (name, title, icon) in enumerate(PAGES)]
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
