#!/usr/bin/env bash
# Other projects' tar test archives for tests/test_tar_corpora.py, into
# /var/cache/lamina-corpora (or $LAMINA_CORPORA):
#   libarchive/  the uuencoded test archives of libarchive's Debian source package
#                (libarchive/test/*.uu, decoded by the test); apt-get source through a
#                private deb-src list made from this machine's own apt sources.
#   gocode/      the Go sources of Docker (golang-github-docker-docker-dev: the layers of its
#                tarsum and archive tests) and of tar-split (golang-github-vbatts-tar-split-dev:
#                the archives it must reassemble bit-exact); the .debs are only unpacked here,
#                installing them would pull in a Go toolchain.
# Go's archive/tar testdata and CPython's tarfile test archive come as binary packages
# (golang-1.19-src, libpython3.11-testsuite), installed by tests/run-all.sh.
set -euo pipefail
cache="${LAMINA_CORPORA:-/var/cache/lamina-corpora}"

fetch_gocode() {
    local gocode="$cache/gocode" work ok=0 i
    [ -e "$gocode/COMPLETE" ] && return 0
    work="$(mktemp -d)"
    for i in 1 2 3; do
        (cd "$work" && apt-get -o APT::Sandbox::User=root download -qq \
             golang-github-docker-docker-dev golang-github-vbatts-tar-split-dev) && { ok=1; break; }
        sleep $((i * 5))
    done
    [ $ok = 1 ] || { rm -rf "$work"; return 1; }
    mkdir -p "$work/x"
    for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
    rm -rf "$gocode.tmp" && mkdir -p "$gocode.tmp"
    cp -a "$work/x/usr/share/gocode/src/github.com/." "$gocode.tmp/"
    (cd "$work" && ls *.deb) > "$gocode.tmp/COMPLETE"
    rm -rf "$gocode" "$work" && mv "$gocode.tmp" "$gocode"
}
fetch_gocode || echo "WARNING: Docker's and tar-split's test archives could not be fetched" >&2

dest="$cache/libarchive"
[ -n "$(ls "$dest"/*.uu 2>/dev/null | head -1)" ] && exit 0

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial"
for f in /etc/apt/sources.list.d/*.sources; do  # deb822
    [ -e "$f" ] && sed 's/^Types:.*/Types: deb-src/' "$f" > "$work/parts/$(basename "$f")"
done
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do  # one-line style
    [ -e "$f" ] && sed -n 's/^deb /deb-src /p' "$f" >> "$work/parts/oneline.list"
done
apt_src=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
         -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
for i in 1 2 3; do
    apt-get "${apt_src[@]}" update -qq && break
    sleep $((i * 5))
done
(cd "$work" && apt-get "${apt_src[@]}" source --download-only -qq libarchive)
orig="$(ls "$work"/libarchive_*.orig.tar.* | head -1)"
mkdir -p "$work/x" "$dest.tmp"
tar -xf "$orig" -C "$work/x" --wildcards '*/libarchive/test/*.uu'
mv "$work"/x/*/libarchive/test/*.uu "$dest.tmp/"
basename "$orig" > "$dest.tmp/SOURCE"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
