#!/usr/bin/env bash
# Other projects' tar test archives for tests/test_tar_corpora.py (and gzip and zstd test streams
# for tests/test_compression_corpora.py), into
# /var/cache/lamina-corpora (or $LAMINA_CORPORA):
#   libarchive/  the uuencoded test archives of libarchive's Debian source package
#                (libarchive/test/*.uu, decoded by the test); apt-get source through a
#                private deb-src list made from this machine's own apt sources.
#   nodetar/     node-tar's test fixtures (test/...: fixtures/tars/*.tar and the others)
#   commons-compress/  Apache Commons Compress's tar test resources (src/test/resources/...:
#                its COMPRESS-NNN bug archives, long paths of many tars, star/xstar/xustar
#                times, sparse files) and its tars in compressions no layer uses
#   busybox/     busybox's tar tests (testsuite/tar.tests with its base64 archives,
#                testsuite/tar/* with archives written as printf escapes; decoded by the test)
#   tar-stream/  node-tar-stream's test fixtures (test/fixtures/*.tar: base-256 fields, latin1
#                and BSD-written unicode names, names of exactly 100 bytes, an incomplete archive)
#   perl-archive-tar/  Perl's Archive::Tar test archives (cpan/Archive-Tar/t/src: signed
#                checksums, long names, links through a directory symlink)
#   plexus-archiver/  Plexus Archiver's (Maven's) test tars (symlinks, a gzipped jar tree)
#   ant/         Apache Ant's tar task tests (plain, gzip and bzip2; relative symlinks)
#   erlang-tar/  Erlang/OTP's erl_tar tests (lib/stdlib/test/tar_SUITE_data: sparse formats,
#                star, bad octal fields, archives cut short)
#   toybox/      toybox's tar tests (tests/files/tar: a long path, the same tree as tar, tgz, tbz2, 7z)
#   php-phar/    PHP's phar extension's tar tests (ext/phar/tests: the archives of its bug
#                reports, most found by fuzzing its reader; links, truncations, PEAR packages)
#   go-mtree/    go-mtree's testdata tars (a path traversal, hardlinks, a collection)
#   buildah/     buildah's test tars (tests/: ADD's type conflicts, a symlinked parent, a
#                global header, symlinked tarballs, the http build contexts)
#   ruby/        rubygems' test gems (test/rubygems/packages/*.gem: plain tars written by its
#                TarWriter, each holding a data.tar.gz; a symlink relative to the wrong directory)
#   zstd/        zstd's own golden streams (tests/golden-decompression: an empty block, an RLE
#                first block), the inputs and dictionary of its golden compression tests, and
#                the gzip file of its copy of gzip's tests (hufts-segv.gz)
#   pgzip/       klauspost/pgzip's gzip test streams (testdata: an empty member of a large size)
#   containers-image/  containers/image's (skopeo's, podman's) fixtures: a docker-archive
#                (docker/archive/fixtures/almostempty.tar) and "Hello" in each compression it
#                detects (copy/ and pkg/compression/fixtures: gzip and zstd as layer
#                compressions, bzip2 and xz refused)
#   podman/      podman's test tars (source package libpod: test/build's http build contexts,
#                a squash test's context, and the docker-archives (.tar.xz) and oci-archives
#                (.tar.gz) of its load tests, one saving a layer.tar as a symlink to another's)
#   containers-common/  containers/common's libimage testdata: BuildKit's docker and OCI
#                exports of an image of no layers ("Layers": null), and a podman export
#   ostree/      libostree's test tars (tests/: repositories, a path-traversal test's, the
#                trees of its static-delta tests)
#   file/        file(1)'s magic tests (tests/*.testfile): a Gentoo binary package (a tar cut at
#                1024 bytes) and zstd frame headers of every version, skippable frames
#   git/         git's test tars (t/t5000, t/t5004: git archive's global header alone, a PAX
#                size of 64 GiB and a PAX mtime in the year 4147 over a cut archive)
#   npm/         npm's test package tarballs (workspaces/arborist/test/fixtures) and five of its registry
#                mocks, one of each writer (fstream's PAX headers of NODETAR.* records...)
#   cargo/       cargo's benchmark workspaces (benches/workspaces/*.tgz)
#   rpm/         rpm's test source tarballs (tests/data/SOURCES)
#   diffoscope/  diffoscope's test tars (tests/data: a directory of mode 000 over its file, a
#                character device, a tar in a tar; .debs' control.tar.gz; a native package)
#   perl-archive-extract/, perl-archive-any/, perl-archive-any-lite/, perl-archive-peek/  the test
#                tars of CPAN's Archive::Extract (t/src), Archive::Any, Archive::Any::Lite, Archive::Peek (t/)
#   jarchivelib/ jarchivelib's test archives (src/test/resources/archive.tar*)
#   tar-conduit/ Haskell tar-conduit's test tars (tests/files);  proftpd-mod-tar/  mod_tar's (t/etc/...)
#   libarchive-c/  python-libarchive-c's test tars (tests/data: '..' names), from its PyPI sdist
#   distlib/     distlib's unpack tests' tars (tests/: '..' names, a symlink out), from its PyPI sdist
#   docker.io/   moby's integration tests' docker save from before docker 1.10 (emptyLayer.tar:
#                a 'repositories' file, a layer.tar of 0 bytes)
#   mmdebstrap/  mmdebstrap --format=tar of a few Debian packages (its rootfs tarball: /dev's nodes,
#                setuid and hardlinked binaries), made from this machine's Debian mirror
#   klauspost-compress/  the Go gzip and zstd decoder's test streams (gzip/testdata/*.gz;
#                zstd/testdata: good.zip, bad.zip and the fuzzers' regression zips of .zst
#                streams, kept zipped; xml.zst...), for tests/test_compression_corpora.py
#                these thirty-five: upstream sources from Debian source packages (apt-get source
#                through a private deb-src list made from this machine's own apt sources)
#   gocode/      the Go sources of Docker (golang-github-docker-docker-dev: the layers of its
#                tarsum and archive tests), of tar-split (golang-github-vbatts-tar-split-dev:
#                the archives it must reassemble bit-exact) and of the OCI image-spec
#                (golang-github-opencontainers-image-spec-dev: the documents of its schema
#                tests, for tests/test_documents.py); the .debs are only unpacked here,
#                installing them would pull in a Go toolchain.
# Go's archive/tar and compress/gzip testdata and CPython's tarfile test archive come as binary packages
# (golang-1.19-src, libpython3.11-testsuite), installed by tests/run-all.sh.
# Not fetched, for want of archives (bookworm): tarlz, pigz, zlib, php-pear (Archive_Tar),
# pristine-tar and golang-github-containers-storage (the mirror lacks their .orig tarballs),
# pax (MirBSD's: no test archives), cpio (its tests write their archives), umoci and containerd
# (their Go tests write theirs), lz4 (none); rust-tar (its crate, so the source package and
# librust-tar-dev, leaves tests/archives out, keeping tests/*.rs only; the mirror lacks its .orig
# and .debian.tar besides: test_tar_corpora.py's crafted cousins write what its archives
# exercise), ruby-minitar (apt-get source fails: the mirror lacks its .orig and .debian
# tarballs; the binary package has no tests), haskell-tar (property tests only), libtar (none),
# rust-tokio-tar and rust-async-tar (not in bookworm), node-tar-fs, python-libarchive-c (fetched from PyPI),
# golang-github-containers-storage, karchive and squashfs-tools-ng (the mirror lacks their
# .orig tarballs), setuptools and node-gyp (the same), python-pip (no tar), e2fsprogs (two GNU
# tars of disk images, as cargo's and rpm's), dpkg (one 0-byte .orig.tar,
# a signature fixture), zig (not in bookworm), tar (its test suite writes every archive from
# scripts; the star archives it can use are downloaded by hand): tests/corpora.py writes GNU tar's
# formats with tar and bsdtar instead.
# Also not fetched: libarchive-tar-wrapper-perl, python-handy-archives, ruby-mixlib-archive,
# ruby-ffi-libarchive, archivemount, notary, tardiff, zarchive (the mirror lacks their .orig
# tarballs); pypy3's test suite and PyPI's backports.tarfile ship CPython's tarfile archives,
# byte for byte those of libpython3.11-testsuite.
set -euo pipefail
cache="${LAMINA_CORPORA:-/var/cache/lamina-corpora}"

fetch_gocode() {
    local gocode="$cache/gocode" work ok=0 i pkg
    local pkgs=(golang-github-docker-docker-dev golang-github-vbatts-tar-split-dev
                golang-github-opencontainers-image-spec-dev)
    if [ -e "$gocode/COMPLETE" ]; then  # complete unless a package was added since
        ok=1
        for pkg in "${pkgs[@]}"; do grep -q "^${pkg}_" "$gocode/COMPLETE" || ok=0; done
        [ $ok = 1 ] && return 0
    fi
    work="$(mktemp -d)"
    for i in 1 2 3; do
        (cd "$work" && apt-get -o APT::Sandbox::User=root download -qq "${pkgs[@]}") && { ok=1; break; }
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

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
apt_src=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$work/parts"
         -o "Dir::State::Lists=$work/lists" -o APT::Sandbox::User=root)
sources_ready=0

deb_src_lists() {
    [ $sources_ready = 1 ] && return 0
    local f i
    mkdir -p "$work/parts" "$work/lists/partial"
    for f in /etc/apt/sources.list.d/*.sources; do  # deb822
        [ -e "$f" ] && sed 's/^Types:.*/Types: deb-src/' "$f" > "$work/parts/$(basename "$f")"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do  # one-line style
        [ -e "$f" ] && sed -n 's/^deb /deb-src /p' "$f" >> "$work/parts/oneline.list"
    done
    for i in 1 2 3; do
        apt-get "${apt_src[@]}" update -qq && { sources_ready=1; return 0; }
        sleep $((i * 5))
    done
    return 1
}

# fetch_source PACKAGE DEST SUBDIR PATTERN...: the files under SUBDIR (. for the top) of
# PACKAGE's upstream source that match a PATTERN, into $cache/DEST keeping their paths below SUBDIR
fetch_source() {
    local pkg="$1" dest="$cache/$2" sub="$3" i orig dl
    shift 3
    [ -e "$dest/SOURCE" ] && return 0
    deb_src_lists || return 1
    dl="$work/$pkg" && mkdir -p "$dl/x"
    # a security update's source may be listed where its .orig is not (the security archive
    # keeps only what changed): then the older versions, which share that .orig.  Only the
    # .orig is needed: apt-get fails when the mirror lacks the .debian.tar, but an .orig it
    # fetched is whole (apt moves a file in place once its hash, from the .dsc, is checked)
    local spec
    for i in 1 2 3; do
        for spec in "$pkg" $(apt-cache "${apt_src[@]}" showsrc "$pkg" 2>/dev/null | sed -n "s/^Version: /$pkg=/p"); do
            (cd "$dl" && apt-get "${apt_src[@]}" source --download-only -qq "$spec" 2>/dev/null) || :
            orig="$(ls "$dl/${pkg}"_*.orig.tar.* 2>/dev/null | grep -v '\.asc$' | head -1)"
            # a native package (diffoscope) has no .orig: its one tarball is the source
            [ -n "$orig" ] || orig="$(ls "$dl/${pkg}"_*.tar.* 2>/dev/null | grep -v '\.debian\.tar\.\|\.asc$' | head -1)"
            [ -n "$orig" ] && break 2
        done
        sleep $((i * 5))
    done
    [ -n "$orig" ] || return 1
    install_members "$orig" "$dl" "$dest" "$sub" "$@"
}

# install_members ARCHIVE DL DEST SUBDIR PATTERN...: ARCHIVE's members (under its one top
# directory) in SUBDIR that match a PATTERN, extracted into DL/x, become DEST: SUBDIR's contents
# and a SOURCE file naming the archive, put in place whole (DEST.tmp, then one mv); DL goes
install_members() {
    local archive="$1" dl="$2" dest="$3" sub="$4" pat pats=() under="$4/"
    shift 4
    [ "$sub" = . ] && under=""
    for pat in "$@"; do pats+=("*/$under$pat"); done
    tar -xf "$archive" -C "$dl/x" --wildcards "${pats[@]}" || return 1
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    cp -a "$dl"/x/*/"$sub"/. "$dest.tmp/"
    basename "$archive" > "$dest.tmp/SOURCE"
    rm -rf "$dest" "$dl" && mv "$dest.tmp" "$dest"
}

fetch_source libarchive libarchive libarchive/test '*.uu' \
    || echo "WARNING: libarchive's test archives could not be fetched" >&2
fetch_source node-tar nodetar test 'fixtures/tars/*.tar' fixtures/parses.tar fixtures/sync-gzip-fail.tgz \
    dir-normalization.tar || echo "WARNING: node-tar's test archives could not be fetched" >&2
fetch_source libcommons-compress-java commons-compress src/test/resources '*.tar' '*.tar.*' '*.tgz' \
    || echo "WARNING: Commons Compress's test archives could not be fetched" >&2
fetch_source busybox busybox testsuite tar.tests 'tar/tar_with_*' tar.utf8.tar.bz2 \
    || echo "WARNING: busybox's tar tests could not be fetched" >&2
fetch_source node-tar-stream tar-stream test/fixtures '*.tar' '*.tgz' \
    || echo "WARNING: tar-stream's test archives could not be fetched" >&2
fetch_source perl perl-archive-tar cpan/Archive-Tar/t/src '*.tar' '*.tgz' \
    || echo "WARNING: Perl Archive::Tar's test archives could not be fetched" >&2
fetch_source plexus-archiver plexus-archiver src/test 'jars/test.tar.gz' 'resources/symlinks/symlinks.tar' \
    || echo "WARNING: Plexus Archiver's test archives could not be fetched" >&2
fetch_source ant ant src/etc/testcases testtarwithsymlinks.tar.gz 'taskdefs/expected/*.tar*' \
    || echo "WARNING: Apache Ant's test archives could not be fetched" >&2
fetch_source erlang erlang-tar lib/stdlib/test/tar_SUITE_data '*.tar' '*.tgz' '*.tar.gz' \
    || echo "WARNING: Erlang's erl_tar test archives could not be fetched" >&2
fetch_source toybox toybox tests/files/tar '*' \
    || echo "WARNING: toybox's tar test archives could not be fetched" >&2
fetch_source php8.2 php-phar ext/phar/tests '*.tar' 'tar/files/*.tgz' 'files/zfapp.tgz' '*.phar.tar.gz' \
    || echo "WARNING: PHP phar's test archives could not be fetched" >&2
fetch_source golang-github-vbatts-go-mtree go-mtree testdata '*.tar' \
    || echo "WARNING: go-mtree's test archives could not be fetched" >&2
fetch_source golang-github-containers-buildah buildah tests '*.tar' '*.tar.gz' \
    || echo "WARNING: buildah's test archives could not be fetched" >&2
fetch_source golang-github-klauspost-pgzip pgzip testdata '*.gz' \
    || echo "WARNING: klauspost/pgzip's test streams could not be fetched" >&2
fetch_source ruby3.1 ruby test/rubygems 'packages/*.gem' \
    || echo "WARNING: rubygems' test gems could not be fetched" >&2
# libzstd's Debian source is the zstd source; klauspost's .orig is 30 MB (its testdata), cached
fetch_source libzstd zstd tests 'golden-*/*' 'gzip/*.gz' \
    || echo "WARNING: zstd's golden test streams could not be fetched" >&2
fetch_source golang-github-klauspost-compress klauspost-compress . 'gzip/testdata/*.gz' \
    'zstd/testdata/good.zip' 'zstd/testdata/bad.zip' 'zstd/testdata/regression.zip' \
    'zstd/testdata/decode-regression.zip' 'zstd/testdata/*.zst' \
    || echo "WARNING: klauspost/compress's gzip and zstd test streams could not be fetched" >&2
fetch_source golang-github-containers-image containers-image . 'copy/fixtures/Hello.*' \
    'pkg/compression/fixtures/Hello.*' 'docker/archive/fixtures/*.tar' \
    || echo "WARNING: containers/image's test fixtures could not be fetched" >&2
fetch_source libpod podman test 'build/*/context.tar' 'e2e/build/squash/*.tgz' 'e2e/testdata/*.tar.xz' \
    'e2e/testdata/*.tar.gz' || echo "WARNING: podman's test tars could not be fetched" >&2
fetch_source ostree ostree tests '*.tar.gz' '*.tar.xz' \
    || echo "WARNING: libostree's test tars could not be fetched" >&2
fetch_source file file tests 'gpkg-*.testfile' 'zstd-*.testfile' \
    || echo "WARNING: file(1)'s magic test files could not be fetched" >&2
# npm's .orig is 67 MB (its registry mocks: 761 package tarballs, of which five writers' are taken)
fetch_source git git t 't5000/*.tar' 't5004/*.tar' \
    || echo "WARNING: git's test tars could not be fetched" >&2
fetch_source npm npm workspaces/arborist/test/fixtures bundle.tgz 'install-types/*.tgz' 'root-bundler/*.tgz' \
    'tarball-dependencies/*.tgz' 'registry-mocks/content/cli-width/-/cli-width-2.1.0.tgz' \
    'registry-mocks/content/create-react-class/-/create-react-class-15.6.3.tgz' \
    'registry-mocks/content/jsonify/-/jsonify-0.0.0.tgz' 'registry-mocks/content/types/react/-/react-17.0.0.tgz' \
    'registry-mocks/content/babel/helper-plugin-utils/-/helper-plugin-utils-7.0.0.tgz' \
    || echo "WARNING: npm's test package tarballs could not be fetched" >&2
fetch_source cargo cargo benches/workspaces '*.tgz' \
    || echo "WARNING: cargo's benchmark workspaces could not be fetched" >&2
fetch_source rpm rpm tests/data/SOURCES '*.tar.gz' \
    || echo "WARNING: rpm's test source tarballs could not be fetched" >&2
# docker.io's .orig is moby's engine (its cli, libnetwork and swarmkit come as other .orig tarballs)
fetch_source docker.io docker.io engine/integration-cli/testdata emptyLayer.tar \
    || echo "WARNING: moby's integration test archive could not be fetched" >&2
fetch_source diffoscope diffoscope tests/data '*.tar' '*.tar.gz' \
    || echo "WARNING: diffoscope's test tars could not be fetched" >&2
fetch_source golang-github-containers-common containers-common libimage/testdata 'buildkit-*.tar' \
    exported-container.tar || echo "WARNING: containers/common's libimage test archives could not be fetched" >&2
# Perl's archive wrappers (CPAN's Archive::Extract, Archive::Any, Archive::Any::Lite, Archive::Peek):
# the tars of their tests, most written by the GNU tar or Archive::Tar of their day ("naughty" ones
# of absolute and '..' names, "impolite" ones of no top directory, a symlink)
fetch_source libarchive-extract-perl perl-archive-extract t/src '*.tar' '*.tgz' '*.tbz' '*.txz' '*.tar.*' \
    || echo "WARNING: Archive::Extract's test archives could not be fetched" >&2
fetch_source libarchive-any-perl perl-archive-any t '*.tar' '*.tgz' '*.tar.gz' \
    || echo "WARNING: Archive::Any's test archives could not be fetched" >&2
fetch_source libarchive-any-lite-perl perl-archive-any-lite t '*.tar' '*.tgz' '*.tar.*' \
    || echo "WARNING: Archive::Any::Lite's test archives could not be fetched" >&2
fetch_source libarchive-peek-perl perl-archive-peek t '*.tgz' '*.tar.*' \
    || echo "WARNING: Archive::Peek's test archives could not be fetched" >&2
# jarchivelib's (a Java wrapper of Commons Compress), Haskell tar-conduit's and ProFTPD mod_tar's test archives
fetch_source jarchivelib jarchivelib src/test/resources 'archive.tar*' \
    || echo "WARNING: jarchivelib's test archives could not be fetched" >&2
fetch_source haskell-tar-conduit tar-conduit tests/files '*.tar' '*.tar.gz' \
    || echo "WARNING: tar-conduit's test archives could not be fetched" >&2
fetch_source proftpd-mod-tar proftpd-mod-tar t/etc/modules/mod_tar '*.tar' \
    || echo "WARNING: ProFTPD mod_tar's test archive could not be fetched" >&2

# fetch_pypi_sdist PROJECT==VERSION DEST SUBDIR PATTERN...: as fetch_source, from a PyPI source
# distribution (pip download in a throwaway venv: pip builds the sdist's metadata to check it)
fetch_pypi_sdist() {
    local spec="$1" dest="$cache/$2" sub="$3" i sdist
    shift 3
    [ -e "$dest/SOURCE" ] && return 0
    local dl="$work/pypi-${spec%%=*}"
    mkdir -p "$dl/x"
    [ -x "$work/pip-venv/bin/pip" ] || python3 -m venv "$work/pip-venv" || return 1
    for i in 1 2 3; do
        "$work/pip-venv/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary :all: \
            -d "$dl" "$spec" >/dev/null 2>&1 && break
        sleep $((i * 5))
    done
    sdist="$(ls "$dl"/*.tar.gz 2>/dev/null | head -1)"
    [ -n "$sdist" ] || return 1
    install_members "$sdist" "$dl" "$dest" "$sub" "$@"
}

# mmdebstrap/rootfs.tar: a Debian rootfs tarball as mmdebstrap writes it (--format=tar: device nodes
# of /dev, setuid binaries, perl's hardlinked binaries), taken as a layer by tests/test_tool_images.py
# (tests/toolimages.py); a few packages of this machine's Debian mirror, unpacked, not configured
fetch_mmdebstrap() {
    local dest="$cache/mmdebstrap" i
    [ -e "$dest/rootfs.tar" ] && return 0
    command -v mmdebstrap >/dev/null || return 1
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    for i in 1 2 3; do
        SOURCE_DATE_EPOCH=1700000000 mmdebstrap --quiet --mode=root --variant=extract \
            --include=base-files,busybox,mount,perl-base --format=tar bookworm "$dest.tmp/rootfs.tar" && break
        rm -f "$dest.tmp/rootfs.tar"
        sleep $((i * 5))
    done
    [ -e "$dest.tmp/rootfs.tar" ] || return 1
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
}
fetch_mmdebstrap || echo "WARNING: mmdebstrap's rootfs tarball could not be made" >&2

# python-libarchive-c's test tars (Debian's source package lacks its .orig on the mirror; PyPI has the
# sdist): absolute and '..' names, CPython's special files again, a name of Windows' codepage
fetch_pypi_sdist libarchive-c==5.3 libarchive-c tests/data 'flags.tar' 'special.tar' 'tar_relative.tar' 'unicode.tar' \
    || echo "WARNING: libarchive-c's test archives could not be fetched" >&2
# distlib's (pip's vendored packaging library) unpack tests: '../' and absolute names, a symlink out of
# the tree with a file under it
fetch_pypi_sdist distlib==0.4.4 distlib tests 'bad.tar' 'bad.tar.*' 'evil.tar.gz' \
    || echo "WARNING: distlib's test archives could not be fetched" >&2
