"""lamina images / tag: docker's columns, flags, filters and --format habits.

The expected strings are docker's documented output formats (docker/cli formatter
package: headers, Go tabwriter with minwidth 10 and padding 3, go-units sizes and
durations), not lamina's own output fed back.
"""
from __future__ import annotations

import json
import re

import pytest

from verbkit import base_and_app_store, fails, ok


@pytest.fixture
def store(tmp_path):
    return base_and_app_store(tmp_path, "localhost:5000/team/app:v2")


def _ids(store):
    return {i.refs[0].familiar(): i.config_digest for i in store.images()}


def test_units_are_go_units():
    from lamina.cli.images import human_duration, human_size
    # go-units size_test.go / duration_test.go documented values
    assert human_size(0) == "0B"
    assert human_size(1000) == "1kB"
    assert human_size(1024) == "1.024kB"
    assert human_size(1000000) == "1MB"
    assert human_size(1048576) == "1.049MB"
    assert human_size(2 * 1024 * 1024) == "2.097MB"
    assert human_size(3.42 * 1000 ** 3) == "3.42GB"
    assert human_size(5.372 * 1000 ** 4) == "5.372TB"
    assert human_size(187_654_321, 3) == "188MB"
    assert human_size(999_999, 3) == "1e+03kB"  # Go's %.3g, faithfully odd
    cases = [(0.45, "Less than a second"), (1, "1 second"), (47, "47 seconds"), (60, "About a minute"),
             (180, "3 minutes"), (35 * 60 + 40, "35 minutes"), (3600, "About an hour"),
             (3600 + 29 * 60, "About an hour"), (3600 + 31 * 60, "2 hours"), (3 * 3600 + 59 * 60, "4 hours"),
             (24 * 3600, "24 hours"), (36 * 3600, "36 hours"), (2 * 86400, "2 days"), (7 * 86400, "7 days"),
             (13 * 86400 + 5 * 3600, "13 days"), (14 * 86400, "2 weeks"), (30 * 86400, "4 weeks"),
             (44 * 86400, "6 weeks"), (60 * 86400, "2 months"), (13 * 30 * 86400, "13 months"),
             (24 * 30 * 86400, "24 months"), (24 * 30 * 86400 + 14 * 86400, "2 years"),
             (3 * 365 * 86400 + 60 * 86400, "3 years")]
    for secs, want in cases:
        assert human_duration(secs) == want, secs


def test_tabwriter_matches_go():
    from lamina.cli.gotemplate import tabwrite
    text = "REPOSITORY\tTAG\tIMAGE ID\tCREATED\tSIZE\nnginx\tlatest\t605c77e624dd\t2 years ago\t141MB\n"
    assert tabwrite(text) == ("REPOSITORY   TAG       IMAGE ID       CREATED       SIZE\n"
                              "nginx        latest    605c77e624dd   2 years ago   141MB\n")
    # a line without tabs ends the column block; trailing text is never padded
    assert tabwrite("a\tb\nplain line\nlonger cell\tc\n") == "a         b\nplain line\nlonger cell   c\n"
    # wide characters count double, like go-runewidth
    assert tabwrite("名前\tx\nab\ty\n") == "名前      x\nab        y\n"


def test_images_table(store):
    out = ok(store.root, "images")
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert lines[0].startswith("REPOSITORY                TAG       IMAGE ID       CREATED")
    ids = _ids(store)
    rows = [re.split(r"\s{3,}", line) for line in lines[1:]]
    # newest first (app was created 2024-01-02, base 2024-01-01); docker's familiar names
    assert [r[:3] for r in rows] == [["localhost:5000/team/app", "v2", ids["localhost:5000/team/app:v2"][7:19]],
                                     ["base", "1.0", ids["base:1.0"][7:19]]]
    assert all(re.fullmatch(r"\d+ (months|years) ago", r[3]) for r in rows)
    assert all(re.fullmatch(r"[\d.]+(B|kB|MB)", r[4]) for r in rows)
    # columns line up (Go tabwriter): every row's IMAGE ID starts where the header's does
    col = lines[0].index("IMAGE ID")
    assert all(line[col:col + 12] in (ids["base:1.0"][7:19], ids["localhost:5000/team/app:v2"][7:19])
               for line in lines[1:])


def test_images_quiet_notrunc_digests(store):
    ids = _ids(store)
    assert ok(store.root, "images", "-q").split() == [ids["localhost:5000/team/app:v2"][7:19], ids["base:1.0"][7:19]]
    out = ok(store.root, "images", "--no-trunc", "-q")
    assert out.split() == [ids["localhost:5000/team/app:v2"], ids["base:1.0"]]
    out = ok(store.root, "images", "--digests")
    assert re.split(r"\s{2,}", out.splitlines()[0]) == ["REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE"]
    assert "<none>" in out.splitlines()[1]  # loaded from a layout: no registry digest
    # a second tag gives a second row with the same ID (docker prints duplicates with -q)
    ok(store.root, "tag", "base:1.0", "base:latest")
    assert ok(store.root, "images", "-q", "base").split() == [ids["base:1.0"][7:19]] * 2


def test_images_filters_and_positional(store):
    ok(store.root, "tag", "base:1.0", "mirror.example:443/lib/base:edge")
    fmt = ["--format", "{{.Repository}}:{{.Tag}}"]
    assert ok(store.root, "images", *fmt, "base").split() == ["base:1.0"]
    assert ok(store.root, "images", *fmt, "base:1.*").split() == ["base:1.0"]
    assert ok(store.root, "images", *fmt, "--filter", "reference=*/team/*").split() == \
        ["localhost:5000/team/app:v2"]
    # Go's path.Match: '*' never crosses a '/'
    assert ok(store.root, "images", *fmt, "--filter", "reference=*:edge").split() == []
    assert ok(store.root, "images", *fmt, "--filter", "reference=*/lib/*:edge").split() == \
        ["mirror.example:443/lib/base:edge"]
    assert ok(store.root, "images", *fmt, "--filter", "dangling=true").split() == []
    assert len(ok(store.root, "images", *fmt, "--filter", "dangling=false").split()) == 3
    assert ok(store.root, "images", *fmt, "--filter", "label=org.example.team=store").split() == \
        ["localhost:5000/team/app:v2"]
    assert ok(store.root, "images", *fmt, "--filter", "before=localhost:5000/team/app:v2").split() == \
        ["base:1.0", "mirror.example:443/lib/base:edge"]
    assert ok(store.root, "images", *fmt, "--filter", "since=base:1.0").split() == ["localhost:5000/team/app:v2"]
    out, err = fails(store.root, "images", "--filter", "colour=blue")
    assert "invalid filter 'colour'" in err
    out, err = fails(store.root, "images", "--filter", "dangling=maybe")
    assert "dangling" in err


def test_dangling_images_show_none(store):
    # moving the tag leaves the old image dangling, as docker does
    ok(store.root, "tag", "localhost:5000/team/app:v2", "base:1.0")
    out = ok(store.root, "images", "--format", "{{.Repository}} {{.Tag}} {{.Digest}}", "--filter", "dangling=true")
    assert out.splitlines() == ["<none> <none> <none>"]
    table = ok(store.root, "images").splitlines()
    assert any(re.split(r"\s{3,}", r)[:2] == ["<none>", "<none>"] for r in table[1:])


def test_images_format_templates(store):
    ids = _ids(store)
    out = ok(store.root, "images", "--format", "table {{.ID}}\\t{{.Repository}}")
    assert out.splitlines()[0].split() == ["IMAGE", "ID", "REPOSITORY"]
    assert out.splitlines()[2].split() == [ids["base:1.0"][7:19], "base"]
    out = ok(store.root, "images", "--format", "{{json .}}")
    rows = [json.loads(line) for line in out.splitlines()]
    assert sorted(rows[0]) == ["Containers", "CreatedAt", "CreatedSince", "Digest", "ID", "Repository", "SharedSize",
                               "Size", "Tag", "UniqueSize", "VirtualSize"]
    assert rows[1]["Repository"] == "base" and rows[1]["Tag"] == "1.0"
    assert re.fullmatch(r"2024-01-01 \d\d:00:00 [+-]\d{4} \w+", rows[1]["CreatedAt"])
    assert ok(store.root, "images", "--format", "json") == out
    # the base layer is shared: both images report it as shared size
    assert rows[0]["SharedSize"] != "0B" and rows[1]["SharedSize"] == rows[0]["SharedSize"]
    assert ok(store.root, "images", "--format", "{{.Repository}}{{if eq .Tag \"v2\"}} (v2){{end}}").split("\n")[0] \
        == "localhost:5000/team/app (v2)"
    assert ok(store.root, "images", "--format", "{{upper .Tag}}|{{pad .Tag 1 1}}|{{truncate .ID 4}}", "base") == \
        f"1.0| 1.0 |{ids['base:1.0'][7:11]}\n"
    out, err = fails(store.root, "images", "--format", "{{.Nope}}")
    assert "can't evaluate field Nope" in err and "Repository" in err
    out, err = fails(store.root, "images", "--format", "{{.ID")
    assert "unclosed action" in err


def test_tag(store):
    ok(store.root, "tag", "base:1.0", "example.com:5000/x/y")
    img = store.resolve("example.com:5000/x/y:latest")
    assert img.config_digest == _ids(store)["base:1.0"]
    # by ID prefix, and docker's default :latest
    ok(store.root, "tag", _ids(store)["base:1.0"][7:15], "short")
    assert store.resolve("short:latest").config_digest == _ids(store)["base:1.0"]
    out, err = fails(store.root, "tag", "base:1.0", "team/UPPER")
    assert "invalid reference format" in err
    out, err = fails(store.root, "tag", "base:1.0", "x@sha256:" + "a" * 64)
    assert "digest" in err
    out, err = fails(store.root, "tag", "nosuch", "x")
    assert "no such image" in err.lower()
    # index.json keeps a full ref name per tag (skopeo/umoci readable)
    names = [m.get("annotations", {}).get("org.opencontainers.image.ref.name")
             for m in json.loads((store.root / "index.json").read_text())["manifests"]]
    assert "example.com:5000/x/y:latest" in names and "docker.io/library/short:latest" in names


def test_root_option_after_the_verb(store, tmp_path):
    """`lamina images --root DIR` and `lamina image ls --root DIR` mean the same store as
    `lamina --root DIR images`; another root shows nothing."""
    from lamina.cli import main
    import contextlib
    import io

    def run(*argv):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(list(argv)) == 0
        return out.getvalue()

    before = run("--root", str(store.root), "images", "-q")
    assert len(before.split()) == 2
    assert run("images", "-q", "--root", str(store.root)) == before
    assert run("image", "ls", "-q", "--root", str(store.root)) == before
    assert run("images", "-q", "--root", str(tmp_path / "other")) == ""


_GO_PATH_MATCH = """package main

import (
	"encoding/json"
	"os"
	"path"
)

func main() {
	var cases [][2]string
	json.NewDecoder(os.Stdin).Decode(&cases)
	out := []interface{}{}
	for _, c := range cases {
		m, err := path.Match(c[0], c[1])
		if err != nil {
			out = append(out, "error")
		} else {
			out = append(out, m)
		}
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def test_reference_patterns_match_as_gos_path_match(tmp_path):
    """docker's reference filter is Go's path.Match, which takes each '*'-separated chunk at the
    first place it fits.  lamina translated the pattern to a regular expression, which
    backtracks over every way to split the name: `images --filter reference=` ten '*a' and
    a 'b' against a name of 60 'a's ran for hours.  Compared with Go's own path.Match, and
    timed out in a child process rather than hung."""
    import subprocess
    import sys
    from conftest import require_tool
    require_tool("go")
    names = ["a" * 60, "library/base:1.0", "localhost:5000/team/app:v2", "x/y", "ab]c", "a-b", "é/ü", "*?[", ""]
    patterns = ["*a" * 10 + "b", "*a*a*a*", "base:1.*", "*/team/*", "*:edge", "*/*", "?/?", "a[-]b", "a[^x]b",
                "[a-c]b*", "ab\\]c", "[\\]]", "*[é]/*", "\\*\\?\\[", "", "*", "a*", "x/*/", "[]a]", "[", "a[",
                "\\", "[a-]", "[^]", "*[", "x*[", "[x-]", "a[b-a]b", "**a", "?*a"]
    cases = [(p, n) for p in patterns for n in names]
    (tmp_path / "main.go").write_text(_GO_PATH_MATCH)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GO111MODULE": "off", "GOPROXY": "off",
           "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "CGO_ENABLED": "0"}
    go = json.loads(subprocess.run(["go", "run", "main.go"], input=json.dumps(cases), cwd=tmp_path, env=env,
                                   check=True, capture_output=True, text=True).stdout)
    code = ("import json, sys\nfrom lamina import images\nout = []\n"
            "for p, n in json.load(sys.stdin):\n    try:\n        out.append(images._path_match(p, n))\n"
            "    except getattr(images, '_BadPattern', ()):\n        out.append('error')\njson.dump(out, sys.stdout)")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps(cases), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    mine = json.loads(r.stdout)
    assert [c for c, a, b in zip(cases, mine, go) if a != b] == []


def test_a_malformed_reference_pattern_is_an_error_as_in_docker(store):
    """'[a-]' is a class Go's path.Match calls malformed (docker: "syntax error in pattern");
    the regular expression lamina made of it matched 'a' or '-'."""
    out, err = fails(store.root, "images", "--filter", "reference=[a-]ase")
    assert "invalid reference filter '[a-]ase': syntax error in pattern" in err
