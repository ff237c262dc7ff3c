"""Tables (CSV, LaTeX, Markdown) and figures for papers."""
