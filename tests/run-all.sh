#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root),
# build and install lamina, then run the whole suite.  .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS=(umoci skopeo tar gzip pigz zstd attr libarchive-tools docker-registry util-linux kmod xfsprogs e2fsprogs)
missing=()
for p in "${DEBS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe overlay 2>/dev/null || true

python3 -m pip install -q --disable-pip-version-check ".[test]"
# Run from outside the source tree so the installed, compiled lamina is what gets imported.
cd tests
exec python3 -m pytest -p no:cacheprovider -q "$@" .
