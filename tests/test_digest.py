import hashlib
import io

import pytest

from lamina import digest
from lamina.errors import InvalidDigestError, LaminaError

GOOD = "sha256:" + "0123456789abcdef" * 4


def test_valid_digest_passes_through():
    assert digest.validate(GOOD) == GOOD
    assert digest.is_valid(GOOD)
    assert digest.hex_of(GOOD) == "0123456789abcdef" * 4


@pytest.mark.parametrize("bad", [
    "", "sha256:", "sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha256:" + "A" * 64,
    "SHA256:" + "0" * 64, "sha256:" + "g" * 64, "sha256:../../../../etc/passwd",
    "sha256:" + "0" * 63 + "/", "sha256:" + "0" * 64 + "\n", " sha256:" + "0" * 64,
    "sha256:" + "0" * 32 + "\x00" + "0" * 31, "0" * 64, "sha256/" + "0" * 64,
])
def test_invalid_digests_are_refused(bad):
    with pytest.raises(InvalidDigestError):
        digest.validate(bad)
    assert not digest.is_valid(bad)


def test_non_string_refused_and_error_is_a_lamina_error():
    with pytest.raises(InvalidDigestError) as e:
        digest.validate(None, "manifest config")
    assert isinstance(e.value, LaminaError) and isinstance(e.value, ValueError)
    assert "manifest config" in str(e.value)


def test_other_algorithm_named_in_message():
    with pytest.raises(InvalidDigestError, match="unsupported digest algorithm 'sha512'"):
        digest.validate("sha512:" + "0" * 128)


def test_blob_path_only_from_valid_digest():
    assert digest.blob_relpath(GOOD) == "blobs/sha256/" + "0123456789abcdef" * 4
    for bad in ("sha256:../../x", "sha256:" + "0" * 63 + "/", "/etc/passwd"):
        with pytest.raises(InvalidDigestError):
            digest.blob_relpath(bad)


def test_from_hex():
    assert digest.from_hex("ab" * 32) == "sha256:" + "ab" * 32
    with pytest.raises(InvalidDigestError):
        digest.from_hex("../x")


def test_sha256_helpers(tmp_path):
    data = b"lamina" * 300_000  # more than one 1 MiB chunk
    want = "sha256:" + hashlib.sha256(data).hexdigest()
    p = tmp_path / "f"
    p.write_bytes(data)
    assert digest.sha256_bytes(data) == want
    assert digest.sha256_file(p) == want
    assert digest.sha256_fileobj(io.BytesIO(data)) == want

    class ReadOnly:  # no readinto: the read() path
        def __init__(self):
            self.b = io.BytesIO(data)

        def read(self, n):
            return self.b.read(n)
    assert digest.sha256_fileobj(ReadOnly()) == want
    assert digest.sha256_bytes(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
