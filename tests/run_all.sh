#!/usr/bin/env bash
# The whole test suite. Installs Debian's chromium (browser tests), and texlive with
# poppler-utils (the export tests compile every exported .tex with pdflatex and read
# the PDF's text with pdftotext) when they are missing and apt is available (as root);
# without them those tests are skipped with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pdflatex >/dev/null 2>&1 || missing+=(texlive-latex-base texlive-latex-recommended)
command -v pdftotext >/dev/null 2>&1 || missing+=(poppler-utils)
if [ "${#missing[@]}" -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
            || echo "warning: could not install ${missing[*]}; the tests that need them will be skipped" >&2
    else
        echo "warning: ${missing[*]} missing and apt-get unavailable (or not root); the tests that need them" \
             "will be skipped" >&2
    fi
fi
exec python -m pytest -q "$@"
