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
