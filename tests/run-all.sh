#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root),
# build and install lamina into a virtual environment (.venv, or $LAMINA_VENV; the
# one the README's first command made is reused), then run the whole suite there.
# .ci/run calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv, python3-dev and gcc: the venv, and the C extension the install compiles
DEBS=(python3-venv python3-dev gcc umoci skopeo tar gzip pigz zstd attr libarchive-tools docker-registry
      util-linux kmod xfsprogs e2fsprogs)
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

venv="$(realpath -m "${LAMINA_VENV:-.venv}")"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check ".[test,plot]"
# Run from outside the source tree so the installed, compiled lamina is what gets imported.
cd tests
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@" .
