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
