#!/usr/bin/env bash
# The whole test suite. Installs Debian's chromium for the browser tests when it
# is missing and apt is available (as root); without it those tests are skipped
# with a reason.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; browser tests will be skipped" >&2
fi
exec python -m pytest -q "$@"
