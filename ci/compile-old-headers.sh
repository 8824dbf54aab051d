#!/usr/bin/env bash
# Compile the extension's generated C against headers without SYS_openat2, SYS_copy_file_range or SYS_renameat2 (what manylinux2014's
# CentOS 7 headers look like), so a wheel build for hosted CI cannot break unnoticed here.
#   ci/compile-old-headers.sh [HEADER_DIR]   HEADER_DIR defaults to native/ (its lamina_sys.h is used)
set -euo pipefail
cd "$(dirname "$0")/.."
native=${1:-native}
python=${PYTHON:-python3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# The shim must really hide the syscall, or this check proves nothing.
printf '#include <sys/syscall.h>\n#if defined(SYS_openat2) || defined(SYS_copy_file_range) || defined(SYS_renameat2)\n#error still defined\n#endif\n' > "$out/probe.c"
gcc -Ici/old-headers -fsyntax-only "$out/probe.c"

pyinc=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
for mod in extract flatten objects; do
    "$python" -m cython -3 --directive boundscheck=False,wraparound=False,cdivision=True \
        -I "$native" -o "$out/$mod.c" "native/$mod.pyx"
    gcc -Ici/old-headers -I"$native" -I"$native/vendor/blake3" -I"$pyinc" -D_GNU_SOURCE=1 -O2 -fno-strict-aliasing -fPIC \
        -Wall -Werror=implicit-function-declaration -Wno-unused-function -Wno-unreachable-code \
        -c "$out/$mod.c" -o "$out/$mod.o"
done
echo "old headers: native/extract.pyx, flatten.pyx and objects.pyx compile without SYS_openat2, SYS_copy_file_range or SYS_renameat2 ($native/lamina_sys.h)"
