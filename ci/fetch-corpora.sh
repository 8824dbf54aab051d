#!/usr/bin/env bash
# Other projects' tar test archives for tests/test_tar_corpora.py, into
# /var/cache/lamina-corpora (or $LAMINA_CORPORA):
#   libarchive/  the uuencoded test archives of libarchive's Debian source package
#                (libarchive/test/*.uu, decoded by the test); apt-get source through a
#                private deb-src list made from this machine's own apt sources.
# Go's archive/tar testdata and CPython's tarfile test archive come as binary packages
# (golang-1.19-src, libpython3.11-testsuite), installed by tests/run-all.sh.
set -euo pipefail
dest="${LAMINA_CORPORA:-/var/cache/lamina-corpora}/libarchive"
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
