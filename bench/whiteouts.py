"""A whiteout-heavy pair of layer tars for ``unpack_ab.py --lower LOWER --tar UPPER``.

    python3 bench/whiteouts.py [-n 4000] [DIR]   (default $LAMINA_BENCH_CACHE/whiteouts)

LOWER: N directories d*/ of 5 small files, N directories o*/ of one file, N files at the
root.  UPPER, the layer above: per i, d{i}/ listed again with 3 of its files whited out,
a new directory n{i}/ with an opaque marker and a file, o{i}/ with an opaque marker (its
lower file goes) and a new file, and a whiteout of the root file r{i}: 6 whiteouts or
markers among 11 entries.  Prints the two paths.
"""
import argparse
import io
import os
import tarfile


def _add(tf, name, kind=tarfile.REGTYPE, data=b"", mode=0o644):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.size = kind, mode if kind != tarfile.DIRTYPE else 0o755, 1_600_000_000, len(data)
    tf.addfile(ti, io.BytesIO(data) if data else None)


def main():
    cache = os.environ.get("LAMINA_BENCH_CACHE", "/var/tmp/lamina-bench")
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=4000)
    ap.add_argument("dir", nargs="?", default=f"{cache}/whiteouts")
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    lower, upper = f"{args.dir}/lower-{args.n}.tar", f"{args.dir}/upper-{args.n}.tar"
    with tarfile.open(lower, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(args.n):
            _add(tf, f"d{i}", tarfile.DIRTYPE)
            for k in range(5):
                _add(tf, f"d{i}/f{k}", data=b"lower\n")
            _add(tf, f"o{i}", tarfile.DIRTYPE)
            _add(tf, f"o{i}/x", data=b"x\n")
            _add(tf, f"r{i}", data=b"r\n")
    with tarfile.open(upper, "w", format=tarfile.USTAR_FORMAT) as tf:
        for i in range(args.n):
            _add(tf, f"d{i}", tarfile.DIRTYPE)
            for k in range(3):
                _add(tf, f"d{i}/.wh.f{k}")
            _add(tf, f"n{i}", tarfile.DIRTYPE)
            _add(tf, f"n{i}/.wh..wh..opq")
            _add(tf, f"n{i}/new", data=b"new\n")
            _add(tf, f"o{i}", tarfile.DIRTYPE)
            _add(tf, f"o{i}/.wh..wh..opq")
            _add(tf, f"o{i}/y", data=b"y\n")
            _add(tf, f".wh.r{i}")
    print(lower)
    print(upper)


if __name__ == "__main__":
    main()
