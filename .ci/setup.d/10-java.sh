# Spark (local mode) needs a Java runtime; install one if this machine lacks it.
if ! command -v java >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq default-jre-headless) || echo "warning: no Java; Spark tests will fail"
fi
