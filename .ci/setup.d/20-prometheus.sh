# Prometheus and promtool (Debian's `prometheus` package) for tests/deploy: `promtool check rules`,
# `promtool test rules` and a real Prometheus scraping a running tuneloop. Install them if missing.
# A failed install only warns here, so the rest of the suite still runs; tests/deploy then fails
# (it requires both tools; it never skips).
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) \
    || echo "warning: no prometheus/promtool; tests/deploy will fail"
fi
