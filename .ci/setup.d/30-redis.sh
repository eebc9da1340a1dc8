# The gateway's shared rate-limit tests start a real redis-server on 127.0.0.1; install it if missing.
if ! command -v redis-server >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq redis-server) || echo "warning: no redis-server; tests/serve Redis tests will fail"
fi
