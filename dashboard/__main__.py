"""`python -m dashboard [--db PATH] [--port N]`: serve the dashboard on this machine only.

Starts Streamlit on dashboard/app.py bound to 127.0.0.1 with XSRF protection
on, whatever folder it is started from and whatever config files Streamlit
finds there (the options are passed on Streamlit's command line, which wins
over every config file). The store is `--db PATH`, else $FER_RESULTS_DB, else
the project's results.duckdb; a relative path is taken from the folder the
command is started in.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

APP = Path(__file__).resolve().with_name("app.py")
ROOT = APP.parent.parent
ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8501


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--db", metavar="PATH", help="results store (default: $FER_RESULTS_DB or results.duckdb)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port on {ADDRESS} (default {DEFAULT_PORT})")
    return parser


def streamlit_argv(db: Path | None, port: int) -> list[str]:
    """The `streamlit run` command line: loopback only, XSRF on, no usage statistics."""
    argv = ["streamlit", "run", str(APP),
            f"--server.address={ADDRESS}", f"--server.port={port}", "--server.headless=true",
            "--server.enableXsrfProtection=true", "--server.enableCORS=true",
            f"--browser.serverAddress={ADDRESS}", "--browser.gatherUsageStats=false"]
    if db is not None:
        argv += ["--", "--db", str(db)]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.port <= 65535:
        print(f"error: --port must be between 1 and 65535, got {args.port}", file=sys.stderr)
        return 2
    given = args.db or os.environ.get("FER_RESULTS_DB")
    db = Path(given).expanduser().resolve() if given else None  # before the chdir below
    os.chdir(ROOT)  # the project's .streamlit/config.toml (theme) applies from any folder
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from streamlit.web import cli

    sys.argv = streamlit_argv(db, args.port)
    return int(cli.main() or 0)


if __name__ == "__main__":
    raise SystemExit(main())
