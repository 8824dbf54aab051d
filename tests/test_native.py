"""The compiled extension is the one in use (no silent pure-Python fallback)."""
import importlib.machinery

import lamina
import lamina._extract


def test_extract_is_compiled_extension():
    f = lamina._extract.__file__
    assert f.endswith(".so"), f"lamina._extract is not the compiled extension: {f}"
    assert any(f.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES)
    assert isinstance(lamina._extract.__loader__, importlib.machinery.ExtensionFileLoader)


def test_native_flag():
    assert lamina.NATIVE is True


def test_apply_layer_uses_native_extractor():
    import lamina.layer
    assert lamina.layer.Extractor is lamina._extract.Extractor
    assert lamina.layer.Extractor.__module__ == "lamina._extract"


def test_renameat2_takes_its_flags(tmp_path):
    """The native renameat2 wrapper had RENAME_NOREPLACE built in, and apply --atomic reached
    RENAME_EXCHANGE through ctypes and libc's wrapper (none before glibc 2.28).  One wrapper
    takes the flags now: exchange swaps two directories, noreplace refuses an existing name."""
    import errno
    import os
    from lamina import _objects
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "from-a").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "from-b").write_text("b")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _objects.renameat2(fd, "a", fd, "b", _objects.RENAME_EXCHANGE)
        assert os.listdir(tmp_path / "a") == ["from-b"] and os.listdir(tmp_path / "b") == ["from-a"]
        try:
            _objects.renameat2(fd, "a", fd, "b", _objects.RENAME_NOREPLACE)
        except OSError as e:
            assert e.errno == errno.EEXIST and e.filename == "a"
        else:
            raise AssertionError("RENAME_NOREPLACE replaced an existing directory")
        assert os.listdir(tmp_path / "b") == ["from-a"]
        _objects.renameat2(fd, "a", fd, "c", 0)
        assert sorted(os.listdir(tmp_path)) == ["b", "c"]
    finally:
        os.close(fd)


def test_apply_atomic_exchanges_dest_by_name_under_its_parent_fd(tmp_path):
    """apply --atomic swaps its staged copy with DEST in one renameat2(RENAME_EXCHANGE) on the
    names under DEST's parent directory fd (through the native wrapper), not two absolute
    paths from the current directory (strace shows which)."""
    import subprocess
    import sys
    from tarbuild import Tar
    dest = tmp_path / "dest"
    first, second = tmp_path / "first.tar", tmp_path / "second.tar"
    first.write_bytes(Tar().file("a", b"old\n").bytes())
    second.write_bytes(Tar().file("a", b"new\n").bytes())
    lamina = [sys.executable, "-m", "lamina"]
    subprocess.run([*lamina, "apply", first, dest], check=True, capture_output=True)
    trace = tmp_path / "strace.txt"
    subprocess.run(["strace", "-f", "-qq", "-e", "trace=renameat2", "-o", trace,
                    *lamina, "apply", "--atomic", second, dest], check=True, capture_output=True)
    calls = [line for line in trace.read_text().splitlines() if "RENAME_EXCHANGE" in line]
    assert len(calls) == 1, trace.read_text()
    assert "AT_FDCWD" not in calls[0] and '"dest"' in calls[0], calls[0]
    assert (dest / "a").read_bytes() == b"new\n"


def test_a_build_in_the_checkout_keeps_no_module_src_no_longer_has(tmp_path):
    """pip builds in the checkout, and setuptools' build_py copies src/ into build/lib without
    ever removing a module there (pypa/setuptools#1871): a module deleted since an earlier build
    (the reverted inflate_ahead.py) went on into the wheel and was installed again.  setup.py's
    build_py now leaves build/lib the modules src/ has, and build_ext's compiled modules."""
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    lib = tmp_path / "lib"
    (lib / "lamina" / "gone").mkdir(parents=True)
    (lib / "lamina" / "inflate_ahead.py").write_text("reverted = True\n")   # a module src/ lost
    (lib / "lamina" / "gone" / "__init__.py").write_text("")                 # a whole subpackage
    (lib / "lamina" / "_extract.fake.so").write_bytes(b"")                  # build_ext's: kept
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(lib)], cwd=repo,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert (lib / "lamina" / "unpacker.py").is_file() and (lib / "lamina" / "store" / "gc.py").is_file()
    assert not (lib / "lamina" / "inflate_ahead.py").exists()
    assert not (lib / "lamina" / "gone" / "__init__.py").exists()
    assert (lib / "lamina" / "_extract.fake.so").exists()
