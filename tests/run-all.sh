#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian machine (as root),
# build and install lamina into a virtual environment (.venv, or $LAMINA_VENV; the
# one the README's first command made is reused), then run the whole suite there; then,
# with no arguments, the two portability checks: the native code against
# manylinux2014-like headers (no SYS_openat2) and the aarch64 build with its test subset
# in a qemu-user arm64 chroot (ci/arm64-chroot.sh, cached under /var/cache/lamina-arm64).
# .ci/run calls this.
#   LAMINA_ARM64=0 skips the arm64 run; LAMINA_ARM64=required makes an infrastructure failure
#   (mirror unreachable while building the chroot) fail the run instead of only warning.
set -euo pipefail
cd "$(dirname "$0")/.."

# python3-venv, python3-dev and gcc: the venv, and the C extension the install compiles;
# libisal-dev and libzstd-dev: the native inflate of lamina._pipeline (without them: the Python one)
# chromium: the bench report is opened headless in a test (tests/test_bench_report_browser.py)
# golang-src, libpython3.11-testsuite: Go's and CPython's tar test archives (tests/test_tar_corpora.py)
# golang-go, busybox, pax, cpio, 7zip, node-tar: the tar writers of tests/test_tar_writers.py (Go's
# archive/tar through tests/gotar, built offline)
# git: git archive writes the gitarchive/ archives of tests/test_tar_corpora.py (tests/corpora.py)
# dpkg (dpkg-deb), tarlz, cpio, tar, libarchive-tools, umoci: the features/ archives of tests/corpora.py
# buildah, podman, mmdebstrap: the images other container tools write (tests/test_tool_images.py;
# mmdebstrap's rootfs tarball is made by ci/fetch-corpora.sh)
# strace: a test counts the directory reads a hostile layer costs (tests/test_hostile_more.py)
DEBS=(python3-venv python3-dev gcc libisal-dev libzstd-dev umoci skopeo tar gzip pigz zstd attr libarchive-tools
      docker-registry util-linux kmod xfsprogs e2fsprogs debootstrap qemu-user-static chromium
      golang-src libpython3.11-testsuite strace golang-go busybox pax cpio 7zip
      node-tar git dpkg tarlz buildah podman mmdebstrap)
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
# other projects' tar test archives (libarchive, node-tar, Commons Compress, busybox, Docker, tar-split), cached
bash ci/fetch-corpora.sh || echo "WARNING: some test archives could not be fetched" >&2

venv="$(realpath -m "${LAMINA_VENV:-.venv}")"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check ".[test,plot]"
# Run from outside the source tree so the installed, compiled lamina is what gets imported.
if [ $# -gt 0 ]; then
    cd tests && exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@" .
fi
status=0
(cd tests && "$venv/bin/python" -m pytest -p no:cacheprovider -q .) || status=1

echo "== native code against headers without SYS_openat2 (manylinux2014)"
PYTHON="$venv/bin/python" bash ci/compile-old-headers.sh || status=1

if [ "${LAMINA_ARM64:-1}" != 0 ]; then
    echo "== aarch64: build and test subset under qemu-user (ci/arm64-chroot.sh)"
    start=$SECONDS
    rc=0
    bash ci/arm64-chroot.sh test || rc=$?
    echo "== aarch64 run took $((SECONDS - start)) s"
    if [ $rc -eq 3 ] && [ "${LAMINA_ARM64:-1}" != required ]; then
        # The mirror or the package index failed after retries: that is not a lamina failure.
        echo "WARNING: the arm64 chroot could not be built (infrastructure); aarch64 NOT tested this run" >&2
    elif [ $rc -ne 0 ]; then
        status=1
    fi
fi
exit $status
