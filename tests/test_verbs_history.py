"""lamina history: docker's rows from the config history (newest first), <missing> IDs, empty_layer sizes."""
from __future__ import annotations

import json
import re

import pytest

from verbkit import base_and_app, fails, load_layout, ok


@pytest.fixture
def store(tmp_path):
    from lamina.store import Store
    s = Store(tmp_path / "root")
    base_and_app(tmp_path / "layout")
    load_layout(s, tmp_path / "layout", "app", "app:v2")
    return s


def test_history_rows_follow_config_history(store):
    image = store.resolve("app:v2")
    hist = image.config["history"]
    out = ok(store.root, "history", "app:v2")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0].rstrip()) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    rows = lines[1:]
    assert len(rows) == len(hist) == 5
    ids = [r.split()[0] for r in rows]
    assert ids == [image.config_digest[7:19]] + ["<missing>"] * 4, "only the top row has an ID, like docker"
    # newest first; CREATED BY truncated to 45 display columns with an ellipsis, tabs become spaces
    created_by = [h["created_by"].replace("\t", " ") for h in reversed(hist)]
    cb_col = lines[0].index("CREATED BY")
    size_col = lines[0].index("SIZE")
    for row, full in zip(rows, created_by):
        shown = row[cb_col:size_col].rstrip()
        if len(full) > 45:
            assert shown == full[:44] + "…"
        else:
            assert shown == full
    # sizes: empty_layer rows are 0B, the others the size of their own layer's snapshot
    sizes = [row[size_col:].split()[0] for row in rows]
    empties = [bool(h.get("empty_layer")) for h in reversed(hist)]
    snap_sizes = [store.snapshot_info(c).size for c in image.chain_ids]
    from lamina.cli.images import human_size
    expected = []
    layer_sizes = list(reversed(snap_sizes))
    for e in empties:
        expected.append("0B" if e else human_size(layer_sizes.pop(0), 3))
    assert sizes == expected
    assert rows[1].rstrip().endswith("buildkit.dockerfile.v0"), "COMMENT column"


def test_history_flags(store):
    image = store.resolve("app:v2")
    hist = list(reversed(image.config["history"]))
    assert ok(store.root, "history", "-q", "app:v2").split() == [image.config_digest[7:19]] + ["<missing>"] * 4
    full = ok(store.root, "history", "--no-trunc", "app:v2")
    assert image.config_digest in full and hist[1]["created_by"].replace("\t", " ") in full
    assert ok(store.root, "history", "-q", "--no-trunc", "app:v2").split()[0] == image.config_digest
    out = ok(store.root, "history", "--format", "{{json .}}", "app:v2")
    rows = [json.loads(x) for x in out.splitlines()]
    assert sorted(rows[0]) == ["Comment", "CreatedAt", "CreatedBy", "CreatedSince", "ID", "Size"]
    assert rows[0]["CreatedAt"] == "2024-01-02T03:04:05Z" and rows[-1]["CreatedAt"] == "2024-01-01T00:00:00Z"
    assert rows[0]["CreatedSince"].endswith(" ago")
    raw = ok(store.root, "history", "-H=false", "app:v2").splitlines()
    assert re.split(r"\s{2,}", raw[0].rstrip()) == ["IMAGE", "CREATED AT", "CREATED BY", "SIZE", "COMMENT"]
    assert "2024-01-02T03:04:05Z" in raw[1]
    byte_sizes = [int(r.split()[-1]) if not r.rstrip().endswith("v0") else int(r.split()[-2]) for r in raw[1:]]
    snap = store.snapshot_info(image.chain_ids[-1]).size
    assert snap in byte_sizes and byte_sizes.count(0) == 3
    out = ok(store.root, "history", "--format", "table {{.ID}}\t{{.Size}}", "app:v2").splitlines()
    assert out[0].split() == ["IMAGE", "SIZE"]
    out, err = fails(store.root, "history", "nosuch")
    assert "no such image" in err.lower()


def test_history_without_config_history(tmp_path):
    """A config without history still shows its layers (one <missing> row each, empty CREATED BY)."""
    import ocibuild
    from lamina.store import Store
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.add(lay.image([{"a": b"a"}, {"b": b"b" * 5000}]), "plain")
    store = Store(tmp_path / "root")
    image = load_layout(store, lay.root, "plain", "plain")
    rows = ok(store.root, "history", "--format", "{{.ID}}|{{.CreatedBy}}|{{.Size}}", "plain").splitlines()
    assert [r.split("|")[0] for r in rows] == [image.config_digest[7:19], "<missing>"]
    assert all(r.split("|")[1] == "" for r in rows)
    # no `created` (and an ocibuild config has none at the top either): docker leaves CREATED
    # empty for anything before 2000; "56 years ago" was the Unix epoch
    since = ok(store.root, "history", "--format", "{{.CreatedSince}}|{{.CreatedAt}}", "plain").splitlines()
    assert [s.split("|")[0] for s in since] == ["", ""], since


def test_images_and_inspect_parse_each_config_once(tmp_path, monkeypatch):
    """A config is parsed whole (an 8 MB one with 350,000 history steps took seconds each time):
    `images` parses each image's once, and `inspect`/`history` of one image no other's."""
    import lamina.store.image as store_image
    from verbkit import base_and_app_store
    store = base_and_app_store(tmp_path)
    ids = {i.refs[0].familiar(): i.config_digest for i in store.images()}
    parsed = []
    real = store_image.parse_config

    def counting(data, what, layer_count):
        parsed.append(next(d for d in ids.values() if d in what))
        return real(data, what, layer_count)
    monkeypatch.setattr(store_image, "parse_config", counting)
    ok(store.root, "images")
    assert sorted(parsed) == sorted(ids.values()), "each config once"
    for verb in ("inspect", "history"):
        parsed.clear()
        ok(store.root, verb, "app:v2")
        assert set(parsed) == {ids["app:v2"]}, f"{verb} app:v2 read base's config"


def test_history_rows_of_a_long_history_stay_in_order(tmp_path):
    """Rows are built oldest first and reversed once (an insert at the front per step made a
    history of 350,000 steps take minutes); the table and a plain template agree with the config."""
    import ocibuild
    from lamina.store import Store
    steps = 3000
    hist = [{"created_by": "ADD base", "created": "2024-01-01T00:00:00Z"}]
    hist += [{"created_by": f"RUN step {i}\tx", "empty_layer": True} for i in range(steps)]
    hist += [{"created_by": "COPY app", "comment": "top"}]
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.add(lay.image([{"a": b"1"}, {"b": b"2"}], config_extra={"history": hist}), "long")
    store = Store(tmp_path / "root")
    load_layout(store, tmp_path / "layout", "long", "long:1")
    want = [h["created_by"].replace("\t", " ") for h in reversed(hist)]
    assert ok(store.root, "history", "--no-trunc", "--format", "{{.CreatedBy}}", "long:1").splitlines() == want
    table = ok(store.root, "history", "--no-trunc", "long:1").splitlines()
    assert len(table) == len(hist) + 1
    assert [r.split()[0] for r in table[1:]] == [store.resolve("long:1").config_digest] + ["<missing>"] * (steps + 1)
    cb = table[0].index("CREATED BY")
    assert [r[cb:].split("   ")[0] for r in table[1:]] == want
    assert table[1].rstrip().endswith("top") and table[-2].split()[-1] == "0B"


def test_a_plain_row_template_errs_as_the_full_one(store):
    """Text-and-fields templates render without the walk; a field the row lacks still gets the
    walk's error, and what they print is what the walk prints."""
    from lamina.cli.gotemplate import GoStruct, parse
    row = GoStruct("history", methods={"ID": lambda: "\x1b[31mx", "Size": lambda: 3}, pointer=True,
                   json_methods=True)
    plain = parse("{{.ID}}\t{{.Size}}!")
    assert plain._plain is not None
    assert plain.execute(row) == plain._walk(row, False) == "\\x1b[31mx\t3!"
    out, err = fails(store.root, "history", "--format", "{{.ID}} {{.Nope}}", "app:v2")
    assert "can't evaluate field Nope" in err


def test_a_long_history_is_written_as_it_comes(tmp_path):
    """`history` streams its rows (350,000 steps held as rows and output peaked at 1.3 GB):
    100,000 steps stay far below what holding them took (~400 MB on main), in every format."""
    import ocibuild
    from lamina.store import Store
    from verbkit import peak_rss_kib
    hist = [{"created_by": "ADD base", "created": "2024-01-01T00:00:00Z"}]
    hist += [({"created_by": f"RUN {i}", "empty_layer": True} if i % 10 == 0 else {"empty_layer": True})
             for i in range(100_000)]
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.add(lay.image([{"a": b"1"}], config_extra={"history": hist}), "long")
    load_layout(Store(tmp_path / "root"), tmp_path / "layout", "long", "long:1")
    for fmt in ("table", "{{.CreatedBy}}"):
        peak = peak_rss_kib(["--root", str(tmp_path / "root"), "history", "--format", fmt, "long:1"], tmp_path)
        assert peak < 150 * 1024, f"--format {fmt}: peak RSS {peak} KiB"


@pytest.mark.parametrize("fmt", [
    "table {{.ID}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}",
    "table {{.CreatedBy}}|{{.Comment}}",                       # no column
    "table {{.ID}}\n{{.Size}}\t{{.Comment}}",                  # a header and rows over two lines
    "table {{.Comment}}\t{{.ID}}",                             # a comment with a tab: blocks of their own
    "{{.CreatedBy}}\t{{.Size}}",                               # not a table: no columns at all
])
def test_streamed_rows_are_the_held_rows_byte_for_byte(store, fmt):
    """write_rows (the rows as they come) writes what render_rows (all rows held) renders, wide
    characters, tabs in cells and headers over several lines included."""
    import io as _io
    from lamina import images as api
    from lamina.cli.gotemplate import render_rows, write_rows
    from lamina.cli.images import HISTORY_HEADERS, history_row
    items = [api.HistoryItem("<missing>", 0, by, size, comment) for by, size, comment in [
        ("RUN 名前", 5, "a\tb"), ("", 0, ""), ("COPY x", 123456, "\u0301e"), ("a\nb", 7, "long comment here")]]
    items += api.history(store, "app:v2")

    def rows():
        return (history_row(it, trunc=False, human=True, now=0) for it in items)
    out = _io.StringIO()
    write_rows(out, fmt, rows, HISTORY_HEADERS)
    assert out.getvalue() == render_rows(fmt, rows(), HISTORY_HEADERS)


def test_storing_an_image_parses_its_config_no_more_than_twice(tmp_path, monkeypatch):
    """A copy into the store parsed the stored config three times (the import's check, then
    add_names, then add_names again for the names it had just written): a quarter second each
    for a config of 300,000 history steps."""
    import ocibuild
    import lamina.store.image as store_image
    lay = ocibuild.Layout(tmp_path / "layout")
    lay.add(lay.image([{"a": b"1"}]), "one")
    parsed = []
    real = store_image.parse_config

    def counting(data, what, layer_count):
        parsed.append(what)
        return real(data, what, layer_count)
    monkeypatch.setattr(store_image, "parse_config", counting)
    ok(tmp_path / "root", "copy", f"oci:{lay.root}:one", "one:1")
    assert len(parsed) <= 2, parsed
