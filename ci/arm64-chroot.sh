#!/usr/bin/env bash
# An arm64 (aarch64) Debian bookworm chroot run under qemu-user, for testing lamina's
# aarch64 build on an x86_64 machine.  Run as root.
#
#   ci/arm64-chroot.sh build            build (or reuse) the cached chroot, print its path
#   ci/arm64-chroot.sh test [ARGS...]   install this checkout into the chroot and run the arm64
#                                       test subset (ARGS go to pytest instead of the subset)
#   ci/arm64-chroot.sh stage            copy this checkout's files to /opt/lamina-src in the chroot
#   ci/arm64-chroot.sh shell [CMD...]   a shell (or CMD) inside the chroot
#
# The chroot is cached under $LAMINA_ARM64_CACHE (default /var/cache/lamina-arm64), keyed by a
# hash of its recipe (package lists and the build functions below), so a change to the recipe
# rebuilds it and anything else reuses it.  It is built in a scratch directory (a build cut short
# resumes after debootstrap and the Debian packages, its slow part) and renamed into place only
# when complete.
#
# Mirrors are the machine's own: the Debian mirror apt uses (/etc/apt/sources.list*) and pip's
# configuration (pip.conf files and PIP_* variables), copied into the chroot.
#
# Exit status: 0 when the tests pass, 1 when they fail, 3 when the chroot could not be built or
# the packages could not be fetched after retries (an infrastructure failure, not a test result).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${LAMINA_ARM64_CACHE:-/var/cache/lamina-arm64}
SUITE=bookworm
INFRA_FAILURE=3

# Debian packages inside the chroot: the build toolchain plus every tool the test subset uses
# (installed with apt inside the chroot, which resolves virtual packages; debootstrap does not).
CHROOT_DEBS="python3 python3-venv python3-dev python3-pip gcc libc6-dev libisal-dev libzstd-dev ca-certificates
umoci skopeo tar gzip pigz zstd attr libarchive-tools docker-registry util-linux patchelf"
# Python packages baked into the chroot's venv (lamina's own deps are resolved again by
# `pip install .[test]`, which only downloads what is missing).
CHROOT_PIP="setuptools>=61 wheel Cython>=3.0 isal>=1.5 zstandard>=0.21 rich>=12 pytest>=7 pytest-benchmark>=4 cryptography>=3.4 auditwheel"

# The substantial subset CI runs on arm64 (see README "Architectures").
SUBSET=(test_native.py test_tar_formats.py test_security.py test_resolver.py test_unpack.py
        test_conformance_umoci.py test_overlay.py test_mount_api.py test_store_core.py
        test_registry_pull.py test_documents.py test_registry_units.py test_digest.py test_platform.py
        test_unpack_topdown.py
        # strace cannot trace a process qemu-user runs (no ptrace there); the x86_64 run has it
        # (a node id from the rootdir, the checkout: pyproject.toml holds the pytest settings)
        --deselect tests/test_native.py::test_apply_atomic_exchanges_dest_by_name_under_its_parent_fd
        # unshare -m cannot make its mounts private in a chroot whose root is no mount point; the
        # test binds its own /etc/hosts there (the x86_64 run has it; the code is pure Python)
        --deselect tests/test_registry_units.py::test_a_localhost_name_is_loopback_only_where_it_resolves_to_loopback
        # the image-spec's schema tests are read from the corpora cache (ci/fetch-corpora.sh), which
        # the chroot does not hold; the reader is pure Python, and the x86_64 run has the test
        --deselect tests/test_documents.py::test_the_image_spec_schema_tests_documents_are_read_as_the_schemas_say)

log() { echo "arm64: $*" >&2; }

retry() {  # retry N CMD...: network steps get a few attempts before they count as infra failures
    local n=$1 i; shift
    for ((i = 1; i <= n; i++)); do
        "$@" && return 0
        log "attempt $i/$n failed: $*"
        sleep $((i * 5))
    done
    return 1
}

debian_mirror() {
    # The first Debian (not -security) URI apt is configured with, deb822 or one-line format.
    local uri
    uri=$( (grep -h -E '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
            grep -h -E '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
                sed -E 's/^deb (\[[^]]*\] )?//' | awk '{print $1}') | grep -v -- -security | head -n1)
    [ -n "$uri" ] || { log "no Debian mirror found in /etc/apt/sources.list*"; exit $INFRA_FAILURE; }
    echo "$uri"
}

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    [ -x /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
    if [ ${#missing[@]} -gt 0 ]; then
        export DEBIAN_FRONTEND=noninteractive
        retry 3 apt-get update -qq || exit $INFRA_FAILURE
        retry 3 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || exit $INFRA_FAILURE
    fi
}

ensure_binfmt() {
    # The F flag makes the kernel open qemu now, so the chroot needs no copy of it.
    local dir=/proc/sys/fs/binfmt_misc
    [ -e $dir/register ] || mount -t binfmt_misc binfmt_misc $dir
    local magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
    local mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
    if [ -e $dir/lamina-arm64 ]; then
        grep -q '^flags: .*F' $dir/lamina-arm64 && grep -q '^enabled' $dir/lamina-arm64 && return 0
        echo -1 > $dir/lamina-arm64
    fi
    # Registered last, so it is the handler the kernel tries first for aarch64 ELF files.
    echo ":lamina-arm64:M::$magic:$mask:/usr/bin/qemu-aarch64-static:OCF" > $dir/register
}

# Run CMD inside the chroot in a private mount namespace: /proc, /sys, /dev and a fresh /tmp
# are mounted for this run only and vanish with it.
in_chroot() {
    unshare --mount --propagation private -- bash -euc '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --rbind /sys "$root/sys"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs -o size=4g tmpfs "$root/tmp"
        cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
        exec chroot "$root" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
            PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            $(env | grep -E "^PIP_" | tr "\n" " ") "$@"
    ' in_chroot "$ROOT" "$@"
}

copy_host_trust() {
    # pip in the chroot talks to the same package index as the host, so it needs the same
    # configuration and the same CA bundle (an index behind a TLS proxy has a local CA).
    local root=$1 f
    for f in /etc/pip.conf /root/.config/pip/pip.conf /root/.pip/pip.conf; do
        [ -f "$f" ] || continue
        mkdir -p "$root$(dirname "$f")"
        cp "$f" "$root$f"
    done
    # pip.conf may name a constraints file; copy what it points at.
    if [ -d /etc/xdg/pip ]; then mkdir -p "$root/etc/xdg"; cp -r /etc/xdg/pip "$root/etc/xdg/"; fi
    cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
}

build() {
    if [ -f "$ROOT/.lamina-complete" ]; then
        touch "$ROOT/.lamina-complete"
        echo "$ROOT"; return 0
    fi
    ensure_host_tools
    ensure_binfmt
    mkdir -p "$CACHE"
    # One builder at a time; an interrupted build resumes after its last finished phase
    # (debootstrap and the Debian packages are the slow part under emulation).
    exec 9>"$CACHE/build-$KEY.lock"
    flock 9
    if [ -f "$ROOT/.lamina-complete" ]; then echo "$ROOT"; return 0; fi
    local work=$CACHE/building-$KEY mirror
    mirror=$(debian_mirror)
    if [ ! -f "$work/.lamina-debs-done" ]; then
        rm -rf --one-file-system "$work"
        log "building $ROOT from $mirror (cold build: debootstrap + packages under qemu)"
        retry 3 debootstrap --arch=arm64 --foreign --variant=minbase "$SUITE" "$work" "$mirror" >&2 ||
            exit $INFRA_FAILURE
        # dpkg under emulation is slow enough without fsyncs; this chroot is disposable.
        mkdir -p "$work/etc/dpkg/dpkg.cfg.d"
        echo force-unsafe-io > "$work/etc/dpkg/dpkg.cfg.d/unsafe-io"
        ROOT=$work in_chroot /debootstrap/debootstrap --second-stage >&2 || exit $INFRA_FAILURE
        # shellcheck disable=SC2086
        ROOT=$work retry 3 in_chroot bash -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "$@" >/dev/null' apt $CHROOT_DEBS >&2 ||
            exit $INFRA_FAILURE
        ROOT=$work in_chroot apt-get clean >&2
        touch "$work/.lamina-debs-done"
    fi
    copy_host_trust "$work"
    [ -x "$work/opt/venv/bin/pip" ] || ROOT=$work in_chroot python3 -m venv /opt/venv >&2 || exit $INFRA_FAILURE
    # shellcheck disable=SC2086
    ROOT=$work retry 3 in_chroot pip install -q --retries 5 $CHROOT_PIP >&2 || exit $INFRA_FAILURE
    touch "$work/.lamina-complete"
    mv "$work" "$ROOT"
    # Chroots of other recipes nobody used for a week are dead weight.
    find "$CACHE" -maxdepth 2 -path "$CACHE/rootfs-*/.lamina-complete" -mtime +7 -printf '%h\0' |
        xargs -0 -r rm -rf --one-file-system || true
    echo "$ROOT"
}

stage_source() {
    # The chroot builds from its own copy of the tracked files (never the host's build output).
    rm -rf "$ROOT/opt/lamina-src" && mkdir -p "$ROOT/opt/lamina-src"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        xargs -0 cp --parents -t "$ROOT/opt/lamina-src")
}

run_tests() {
    stage_source
    # Installing is the aarch64 compile of the extension: its failure is a test failure.
    in_chroot bash -euc '
        cd /opt/lamina-src
        pip install -q --no-build-isolation ".[test]"
        python -c "import lamina._extract as e, platform; print(\"arm64: lamina built on\", platform.machine(), \"->\", e.__file__)"
        # Any pytest failure (even its own exit 3/4) is a test failure, never the infra code 3.
        cd tests && env CI=true LAMINA_TEST_EMULATION=qemu-user python -m pytest -p no:cacheprovider -q "$@" || exit 1
    ' run_tests "$@"
}

KEY=$({ declare -f build ensure_binfmt; echo "$SUITE $CHROOT_DEBS $CHROOT_PIP"; } |
      sha256sum | cut -c1-16)
ROOT=$CACHE/rootfs-$KEY

main() {
    cmd=${1:-test}; shift || true
    case $cmd in
        build) build ;;
        stage)
            build >/dev/null
            stage_source ;;
        shell)
            build >/dev/null
            if [ $# -eq 0 ]; then set -- bash; fi
            in_chroot "$@" ;;
        test)
            build >/dev/null
            ensure_binfmt
            if [ $# -eq 0 ]; then set -- "${SUBSET[@]}"; fi
            run_tests "$@" ;;
        *) echo "usage: $0 build|test [PYTEST ARGS]|shell [CMD]" >&2; exit 2 ;;
    esac
}

# Parsed in full before it runs, so editing this file during a long build cannot derail it.
main "$@"; exit
