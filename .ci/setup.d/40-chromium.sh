# The web console's browser tests (tests/console) drive Debian's headless Chromium through Playwright
# (the Python package, from the dev extra; never `playwright install`). Install Chromium if missing.
# A failed install only warns here; tests/console then fails (it requires Chromium; it never skips).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
    || echo "warning: no chromium; tests/console will fail"
fi
