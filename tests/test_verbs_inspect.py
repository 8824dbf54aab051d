"""lamina inspect and the Go template engine behind every --format.

Expected values follow docker: the image inspect JSON of moby's api/types/image
InspectResponse (field names, order, omitempty), docker CLI's template functions and
fallback to the raw JSON, and Go's fmt formatting of slices ([a b]) and maps (map[k:v]).
"""
from __future__ import annotations

import json

import pytest

from verbkit import APP_CONFIG, base_and_app_store, fails, lamina, ok

INSPECT_KEYS = ["Id", "RepoTags", "RepoDigests", "Created", "Author", "Config", "Architecture", "Os", "Size",
                "GraphDriver", "RootFS", "Metadata", "Descriptor"]


@pytest.fixture
def store(tmp_path):
    return base_and_app_store(tmp_path)


def test_inspect_json_is_dockers_shape(store):
    out = ok(store.root, "inspect", "app:v2")
    assert out.startswith("[\n    {\n        \"Id\": \"sha256:"), "4-space indented array, like docker"
    docs = json.loads(out)
    assert len(docs) == 1
    d = docs[0]
    assert list(d) == INSPECT_KEYS, "field order and omitempty of moby's InspectResponse"
    image = store.resolve("app:v2")
    assert d["Id"] == image.config_digest
    assert d["RepoTags"] == ["app:v2"] and d["RepoDigests"] == []
    assert d["Created"] == "2024-01-02T03:04:05Z" and d["Author"] == "lamina tests"
    assert d["Architecture"] == "amd64" and d["Os"] == "linux"
    assert d["RootFS"] == {"Type": "layers", "Layers": image.diff_ids}
    assert d["Metadata"] == {"LastTagTime": "0001-01-01T00:00:00Z"}
    assert d["Descriptor"]["digest"] == image.manifest_digest
    assert list(d["Config"]) == ["User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                                 "Labels", "StopSignal"]
    assert d["Config"]["ExposedPorts"] == {"443/tcp": {}, "80/tcp": {}}
    assert d["Config"]["Env"] == APP_CONFIG["Env"] and d["Config"]["User"] == "1000:1000"
    lower = d["GraphDriver"]["Data"]["LowerDir"].split(":")
    assert lower == [str(store.paths.snapshot(c) / "fs") for c in reversed(image.chain_ids)]
    assert d["Size"] > 0
    # --format json: the same documents, compact
    assert json.loads(ok(store.root, "inspect", "--format", "json", "app:v2")) == docs
    assert "\n" not in ok(store.root, "inspect", "--format", "json", "app:v2").rstrip("\n")
    # `image inspect` is the same verb, several refs give several documents in order
    two = json.loads(ok(store.root, "image", "inspect", "base:1.0", "app:v2"))
    assert [x["RepoTags"] for x in two] == [["base:1.0"], ["app:v2"]]
    # by ID prefix and full ID
    assert json.loads(ok(store.root, "inspect", image.config_digest[7:19]))[0]["Id"] == image.config_digest
    assert json.loads(ok(store.root, "inspect", image.config_digest))[0]["Id"] == image.config_digest


def test_a_short_id_with_its_algorithm_names_the_image_in_every_verb(store, tmp_path):
    """``sha256:<12 hex>``, as ``docker images --digests``-style output and docker's own ID lookup
    (its digest set takes "algorithm:prefix") read it: every verb failed with "invalid digest"."""
    image = store.resolve("app:v2")
    short = "sha256:" + image.config_digest[7:19]
    assert json.loads(ok(store.root, "inspect", short))[0]["Id"] == image.config_digest
    assert ok(store.root, "history", "-q", short).split() == ok(store.root, "history", "-q", "app:v2").split()
    ok(store.root, "tag", short, "app:again")
    assert store.resolve("app:again").config_digest == image.config_digest
    ok(store.root, "unpack", short, tmp_path / "out")
    assert (tmp_path / "out").is_dir()
    _, err = fails(store.root, "inspect", "sha256:" + "0" * 12)
    assert "sha256:000000000000" in err and "invalid digest" not in err, err
    _, err = fails(store.root, "history", "sha256:XYZ")
    assert "invalid" in err, err
    assert sorted(ok(store.root, "rmi", short).splitlines()[:2]) == ["Untagged: app:again", "Untagged: app:v2"]


def test_inspect_format_docker_examples(store):
    image = store.resolve("app:v2")
    f = lambda tmpl: ok(store.root, "inspect", "--format", tmpl, "app:v2")  # noqa: E731
    assert f("{{.Config.Env}}") == "[PATH=/usr/local/bin:/usr/bin:/bin APP_MODE=prod]\n"
    assert f("{{.Config.ExposedPorts}}") == "map[443/tcp:{} 80/tcp:{}]\n"
    assert f("{{.Config.Volumes}}") == "map[/data:{}]\n"
    assert f("{{.Config.Labels}}") == "map[org.example.team:store version:1.2]\n"
    assert f("{{index .Config.Labels \"version\"}}") == "1.2\n"
    assert f("{{index .Config.Labels \"missing\"}}") == "\n", "index of a map[string]string gives \"\""
    assert f("{{index .RepoTags 0}}") == "app:v2\n"
    assert json.loads(f("{{json .Config}}")) == json.loads(
        json.dumps({k: APP_CONFIG[k] for k in ["User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes",
                                               "WorkingDir", "Labels", "StopSignal"]}))
    assert f("{{json .Config}}").startswith('{"User":"1000:1000","ExposedPorts":{"443/tcp":{},"80/tcp":{}},')
    assert f("{{.ID}}") == f"{image.config_digest}\n"
    assert f("{{.Id}}") == f"{image.config_digest}\n", "docker retries a failing template on the raw JSON"
    fails(store.root, "inspect", "--format", "{{.ID}} {{.Id}}", "app:v2")  # neither view has both: docker fails too
    assert f("{{.Size}}") == f"{json.loads(f('{{json .}}'))['Size']}\n"
    assert f("{{len .RootFS.Layers}} {{.Os}}/{{.Architecture}}") == "2 linux/amd64\n"
    assert f("{{range .Config.Env}}{{println .}}{{end}}") == "PATH=/usr/local/bin:/usr/bin:/bin\nAPP_MODE=prod\n\n"
    assert f("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}") == "org.example.team=store;version=1.2;\n"
    assert f("{{join .Config.Cmd \" \"}}") == "python3 /app/main.py\n"
    assert f("{{if .Config.Healthcheck}}hc{{else}}no hc{{end}}") == "no hc\n"
    assert f("{{.Config.Entrypoint}} {{.Config.OnBuild}}") == "[/bin/sh -c] []\n"
    assert f("{{.RepoDigests}}") == "[]\n"
    assert f("{{json .RootFS}}") == json.dumps({"Type": "layers", "Layers": image.diff_ids},
                                               separators=(",", ":")) + "\n"
    base = ok(store.root, "inspect", "-f", "{{.Config.Cmd}} {{.Config.User}}|", "base:1.0")
    assert base == "[/bin/sh] |\n"


def test_inspect_errors_are_clear(store):
    rc, out, err = lamina(store.root, "inspect", "--format", "{{.Config.Env", "app:v2")
    assert rc != 0 and out == "" and "unclosed action" in err
    rc, out, err = lamina(store.root, "inspect", "--format", "{{template \"x\"}}", "app:v2")
    assert rc != 0 and "not supported" in err
    rc, out, err = lamina(store.root, "inspect", "--format", "{{html .Id}}", "app:v2")
    assert rc != 0 and "html" in err and "not supported" in err
    rc, out, err = lamina(store.root, "inspect", "--format", "{{nosuchfunc .Id}}", "app:v2")
    assert rc != 0 and 'function "nosuchfunc" not defined' in err
    rc, out, err = lamina(store.root, "inspect", "--format", "{{.Config.Nope}}", "app:v2")
    assert rc != 0 and "Nope" in err and out.strip() == ""
    rc, out, err = lamina(store.root, "inspect", "--format", "{{index .RepoTags 5}}", "app:v2")
    assert rc != 0 and "index out of range" in err
    # a missing image is reported, the others still printed, exit 1
    rc, out, err = lamina(store.root, "inspect", "--format", "{{.Os}}", "nosuch", "app:v2")
    assert rc == 1 and out == "linux\n" and "no such image: nosuch:latest" in err
    rc, out, err = lamina(store.root, "inspect", "nosuch")
    assert rc == 1 and json.loads(out) == [] and err.startswith("lamina: error: no such image")


# --- the template engine -------------------------------------------------------------------------------

def render(src, data):
    from lamina.cli.gotemplate import parse
    return parse(src).execute(data)


def test_go_value_formatting():
    from lamina.cli.gotemplate import EMPTY, GoStruct, format_value, go_json
    assert format_value(["a", "b"]) == "[a b]"
    assert format_value([]) == "[]"
    assert format_value({"b": 1, "a": [1, 2]}) == "map[a:[1 2] b:1]"
    assert format_value({"80/tcp": EMPTY}) == "map[80/tcp:{}]"
    assert format_value(None) == "<nil>"
    assert format_value([None, True, 1.5, 1e6, 123456789.0]) == "[<nil> true 1.5 1e+06 1.23456789e+08]"
    s = GoStruct("T", [("A", "x"), ("B", [1]), ("C", None)], pointer=True)
    assert format_value(s) == "&{x [1] <nil>}"
    assert go_json({"b": "<&>", "a": "\u2028"}) == '{"a":"\\u2028","b":"<&>"}', "sorted keys, no HTML escaping"
    assert go_json(1e21) == "1e+21" and go_json(1e20) == "100000000000000000000" and go_json(1e-7) == "1e-7"


def test_template_language():
    data = {"A": "x", "N": 3, "L": ["p", "q"], "M": {"k2": "v2", "k1": "v1"}, "E": [], "Z": None, "T": True}
    assert render("{{.A}}-{{.N}}-{{.L}}-{{.M}}", data) == "x-3-[p q]-map[k1:v1 k2:v2]"
    assert render("{{.Missing}}|{{.Missing.Deeper}}", data) == "<no value>|<no value>"
    assert render("{{if .E}}y{{else if .T}}t{{else}}n{{end}}", data) == "t"
    assert render("{{with .A}}[{{.}}]{{end}}{{with .E}}no{{else}}empty{{end}}", data) == "[x]empty"
    assert render("{{range $i, $e := .L}}{{$i}}:{{$e}},{{end}}", data) == "0:p,1:q,"
    assert render("{{range .E}}x{{else}}none{{end}}", data) == "none"
    assert render("{{range .L}}{{if eq . \"q\"}}{{break}}{{end}}{{.}}{{end}}", data) == "p"
    assert render("{{range .L}}{{if eq . \"p\"}}{{continue}}{{end}}{{.}}{{end}}", data) == "q"
    assert render("{{$x := .A}}{{$x}}{{$x = \"y\"}}{{$x}}", data) == "xy"
    assert render("{{.L | len}} {{len .M}} {{index .M \"k1\"}} {{slice .L 1}}", data) == "2 2 v1 [q]"
    assert render("{{and .T .A}} {{or .Z .A}} {{not .E}}", data) == "x x true"
    assert render("{{lt .N 4}} {{ge .N 4}} {{ne .A \"x\"}} {{eq .N 1 2 3}}", data) == "true false false true"
    assert render('{{printf "%-4s|%03d|%v|%q" .A .N .L .A}}', data) == 'x   |003|[p q]|"x"'
    assert render("{{- .A -}}  \n  {{/* a comment */}}  {{- .N}}", data) == "x3"
    assert render("{{(index .L 1) | upper}} {{json .M}} {{split \"a,b\" \",\"}}", data) == 'Q {"k1":"v1","k2":"v2"} [a b]'
    assert render("{{title \"hello world\"}} {{lower \"ABC\"}}", data) == "Hello World abc"
    assert render("{{`raw \\n`}} {{\"esc\\t\"}}", data) == "raw \\n esc\t"


_GO_TEMPLATE = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

func main() {
	var out []string
	for _, src := range os.Args[1:] {
		var b strings.Builder
		err := template.Must(template.New("").Parse(src)).Execute(&b, map[string]interface{}{
			"S": "ab", "H": "a\x1bb\u202e\u00e9\t\"\\\u00a0\U0001F600\u0301\x7f\u009b", "N": -255,
			"L": []string{"x\ny", "\u00e9"}, "M": map[string]string{"k\x1b": "v\u202e"}})
		if err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def test_printf_widths_fmt_gives_up_on_end_the_format_as_in_go(tmp_path):
    """fmt reads a width or precision of at most about 1e6 (``tooLarge``); past it, the rest
    of the format is %!(NOVERB).  lamina padded to the number it read: '%99999999999d'
    asked for 100 GB (MemoryError, a traceback), '%12345678d' wrote 12 MB where docker
    writes 25 bytes.  Compared with Go's own text/template."""
    srcs = ['{{printf "%99999999999d|" 1}}', '{{printf "%s %12345678" .S 1}}', '{{printf "%5.12345678f|" 1.5}}',
            '{{printf "%-100000000s|x" .S}}', '{{printf "%10000000d|" 1 | len}}', '{{printf "%1000001d|" 1 | len}}',
            '{{printf "%.s|%.d|%.1s|" .S 7 .S}}', '{{printf "%-4s|%03d|%q" .S 3 .S}}', '{{printf "100%%"}}']
    go = _go_renders(tmp_path, srcs)
    assert dict(zip(srcs, _render_in_1_gib(srcs, _GO_DATA))) == dict(zip(srcs, go))


# the data _GO_TEMPLATE gives its templates
_GO_DATA = {"S": "ab", "H": "a\x1bb\u202e\u00e9\t\"\\\u00a0\U0001F600\u0301\x7f\u009b", "N": -255,
            "L": ["x\ny", "\u00e9"], "M": {"k\x1b": "v\u202e"}}


def _go_renders(tmp_path, srcs):
    """What Go's own text/template makes of each template over _GO_DATA."""
    import subprocess
    from conftest import require_tool
    require_tool("go")
    (tmp_path / "main.go").write_text(_GO_TEMPLATE)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GO111MODULE": "off", "GOPROXY": "off",
           "GOCACHE": str(tmp_path / "gocache"), "GOPATH": str(tmp_path / "gopath"), "CGO_ENABLED": "0"}
    return json.loads(subprocess.run(["go", "run", "main.go", *srcs], cwd=tmp_path, env=env, check=True,
                                     capture_output=True, text=True).stdout)


def test_printf_quotes_signs_and_bad_verbs_as_go_does(tmp_path):
    """%q is strconv.Quote (an image's ESC as \\x1b, U+202E as \\u202e, a no-break space
    escaped, each element of a list or map quoted; an integer as its quoted character), not
    JSON's spelling; %+d, % d, %#x and %08d of a negative number sign and pad as fmt does;
    %s of a number is %!s(int=...).  Compared with Go's own text/template (the output then
    goes through the same escaping of what drives a terminal, as every template value)."""
    from lamina.cli import no_escapes
    srcs = ['{{printf "%q" .H}}', '{{printf "%q" .N}}', '{{printf "%q" .L}}', '{{printf "%q" .M}}',
            '{{printf "%08d|%+d|% d|%#x|%-6d|" .N 5 5 255 .N}}', '{{printf "%s" .N}}', '{{printf "%x|%X" .N .S}}']
    go = _go_renders(tmp_path, srcs)
    assert {s: render(s, _GO_DATA) for s in srcs} == {s: no_escapes(g) for s, g in zip(srcs, go)}


def test_a_bad_verb_pads_the_operand_inside_as_go_does(tmp_path):
    """fmt's badVerb writes the operand with the verb's width and flags inside the parentheses:
    %8s of -255 is %!s(int=    -255).  lamina padded the whole %!s(int=-255) to the width
    (no padding at all past 8 characters).  Compared with Go's own text/template."""
    srcs = ['{{printf "%8s|%-8s|%08s|%6d|%7t|%6f|%6x|%6q" .N .N .N .S .N .S true true}}',
            '{{printf "%6s|%5d|%5s|%-4q" 1.5 .L .M 1.5}}',
            '{{printf "%.5s|%.5v|%8.5d|%.0d|%+v|%08.5d|%-8.4v|" .N .N .N 0 5 .N .N}}']
    go = _go_renders(tmp_path, srcs)
    assert go[0].startswith("%!s(int=    -255)|"), go  # what the test is about, whatever Go version runs
    from lamina.cli import no_escapes
    assert {s: render(s, _GO_DATA) for s in srcs} == {s: no_escapes(g) for s, g in zip(srcs, go)}


def _render_in_1_gib(srcs, data):
    """Each template rendered by a child process of at most 1 GiB of address space: what an
    engine that takes a number for an allocation asks for fails there, not on the machine."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    code = ("import json, sys\nfrom lamina.cli.gotemplate import parse\nsrcs, data = json.load(sys.stdin)\n"
            "json.dump([parse(s).execute(data) for s in srcs], sys.stdout)")
    r = subprocess.run([sys.executable, "-c", code], input=json.dumps([srcs, data]), capture_output=True,
                       text=True, preexec_fn=limit)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_range_over_a_huge_integer_counts_as_it_goes():
    """Go 1.22's range over an integer counts; lamina made the whole list first (gigabytes
    before the first {{break}})."""
    srcs = ["{{range $i := 10000000000}}{{if eq $i 3}}{{break}}{{end}}{{$i}}{{end}}", "{{range -2}}x{{else}}none{{end}}"]
    assert _render_in_1_gib(srcs, {}) == ["012", "none"]


def test_a_template_nested_deeper_than_the_stack_is_a_template_error(store):
    """The parser and the executor recurse per level of nesting: past Python's stack a
    parenthesis or {{if}} 3,000 deep was a RecursionError traceback (Go stops parsing at
    10,000: "max expression depth exceeded"), and a nesting the parser took could still
    overflow while executing."""
    from lamina.cli.gotemplate import TemplateError
    phases = set()
    for depth in range(200, 600, 10):
        try:
            render("{{" + "(print " * depth + "1" + ")" * depth + "}}", {})
        except TemplateError as e:
            assert "max expression depth exceeded" in str(e), str(e)
            phases.add("execute" if 'executing ""' in str(e) else "parse")
    assert phases == {"parse", "execute"}
    for src in ("{{" + "(" * 1000 + "1" + ")" * 1000 + "}}", "{{if 1}}" * 3000 + "x" + "{{end}}" * 3000,
                "{{range $.L}}" * 3000 + "{{end}}" * 3000):
        out, err = fails(store.root, "inspect", "--format", src, "app:v2")
        assert "max expression depth exceeded" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("src, msg", [
    ("{{.A", "unclosed action"),
    ("{{if .A}}x", "missing {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{define \"x\"}}{{end}}", "not supported"),
    ("{{block \"x\" .}}{{end}}", "not supported"),
    ("{{nope}}", 'function "nope" not defined'),
    ("{{.A.B}}", "can't evaluate field B in type string"),
    ("{{.S.Nope}}", "can't evaluate field Nope in type T"),
    ("{{.Z.X}}", "nil pointer"),
    ("{{index .L 9}}", "index out of range"),
    ("{{printf \"%e\" 1}}", "not supported"),
    ("{{\"a\" \"b\"}}", "can't give argument to non-function"),
    ("{{break}}", "outside {{range}}"),
    ("{{$nope}}", "undefined variable"),
    ("{{range .A}}{{end}}", "range can't iterate over x"),
    ("{{len 3}}", "len of type int"),
    ("{{eq .L .L}}", "comparison"),
    ("{{pad \"x\" -1 0}}", "error calling pad: strings: negative Repeat count"),
    ("{{truncate \"abc\" -1}}", "error calling truncate: runtime error: slice bounds out of range [:-1]"),
])
def test_template_errors(src, msg):
    from lamina.cli.gotemplate import GoStruct, TemplateError
    data = {"A": "x", "L": [1], "Z": None, "S": GoStruct("T", [("F", 1)])}
    with pytest.raises(TemplateError) as e:
        render(src, data)
    assert msg in str(e.value)
    assert str(e.value).startswith("template: :1:"), "Go's position prefix"


def test_table_prefix_and_headers():
    from lamina.cli.gotemplate import GoStruct, render_rows
    rows = [GoStruct("r", methods={"ID": lambda: "abc", "Size": lambda: "1kB"}),
            GoStruct("r", methods={"ID": lambda: "defghijklmnop", "Size": lambda: "22MB"})]
    hdr = {"ID": "IMAGE ID", "Size": "SIZE"}
    assert render_rows("table {{.ID}}\\t{{.Size}}", rows, hdr) == (
        "IMAGE ID        SIZE\nabc             1kB\ndefghijklmnop   22MB\n")
    assert render_rows("table {{.ID}}\\t{{lower .Size}}", rows, hdr).splitlines()[0] == "IMAGE ID        SIZE", \
        "header functions keep the header text"
    assert render_rows("{{.ID}}", rows, hdr) == "abc\ndefghijklmnop\n"
    assert render_rows("json", rows, hdr).splitlines()[0] == '{"ID":"abc","Size":"1kB"}'


def test_printf_formats_each_operand_as_go_does(tmp_path):
    """fmt pads each element of a slice or map (%8v of [a b] is [       a        b]), truncates
    a string to its precision for %q and %x too, spaces and prefixes %x of a string's bytes for
    "% x" and "%#x", signs a float for %+f and zero-pads %05v of a number, and says %!s(<nil>)
    for a nil operand of any verb but %v; lamina padded a whole list, ignored those flags and
    printed <nil>.  Compared with Go's own text/template."""
    from lamina.cli import no_escapes
    srcs = ['{{printf "%8v|%5s|%x|%d" .L .L .L .L}}', '{{printf "%6.1v|%-4q|%5q" .L .L .L}}',
            '{{printf "%.1q|%.1x|%.0x|% x|%#x|% #X|%X" .S .S .S .S .S .S .S}}', '{{printf "%-7v|" .M}}',
            '{{printf "%+.2f|% .1f|%08.2f|%+d|%+v" 1.5 2.0 -2.5 -3 4}}', '{{printf "%05v|%05v|%-05v|" 3 -3 3}}',
            '{{printf "%s|%v|%d|%q" .Nope .Nope .Nope nil}}', '{{printf "%5.2s|%-8v|%q|%x|%.3s|" .S .N .S .H .H}}']
    go = _go_renders(tmp_path, srcs)
    assert {s: render(s, _GO_DATA) for s in srcs} == {s: no_escapes(g) for s, g in zip(srcs, go)}


def test_printf_zero_pads_strings_and_writes_floats_in_hex_as_go_does(tmp_path):
    """fmt pads with zeros whatever it pads when the flag says so (%05s of "ab" is 000ab, %08q
    000"ab", %05t 0true: Go's own fmt tests, kept when a 1.23 change to spaces was reverted),
    where lamina padded strings with spaces; and %x of a float is its hex form (0x1.8p+00),
    which lamina refused as %!x(float64=1.5).  Compared with Go's own text/template."""
    from lamina.cli import no_escapes
    srcs = ['{{printf "%05s|%08q|%05v|%06x|%05t|%-05s|%05.1s|" .S .S .S .S true .S .S}}',
            '{{printf "%x|%X|%x|%x|%x|%x" 1.5 -0.1 0.0 1e300 5e-324 2.5e-310}}',
            '{{printf "%.3x|%.0x|%.1x|%+x|%#x|%12.2x|%012.2x|%-12x|" 1.0 1.5 1.96875 3.0 3.0 -1.5 -1.5 1.5}}',
            '{{printf "%.2x|%.1x|%.0X" 1.03125 1.09375 2.5}}']
    go = _go_renders(tmp_path, srcs)
    assert {s: render(s, _GO_DATA) for s in srcs} == {s: no_escapes(g) for s, g in zip(srcs, go)}


def test_slice_len_and_index_of_a_string_count_its_bytes_as_go_does(tmp_path):
    """Go's slice of a string cuts its bytes, as len and index count them: slice "héllo" 1 3 is
    "é", where lamina cut characters ("él") and refused slice "héllo" 0 6, the whole string;
    its errors are Go's ("index out of range: 7", "invalid slice index: 3 > 1").  docker's
    truncate cuts bytes too, a character cut in two left as its first byte, as Go leaves it."""
    from lamina.cli.gotemplate import TemplateError
    srcs = ['{{slice "héllo" 1 3}}|{{slice "héllo" 0 6}}|{{len (slice "héllo" 0 2)}}|{{printf "%q" (slice "héllo" 0 2)}}',
            '{{index "héllo" 2}}|{{slice .L 1}}|{{slice .L 0 1 2}}|{{printf "%q" (slice .H 4 8)}}']
    go = _go_renders(tmp_path, srcs)
    assert [render(s, _GO_DATA) for s in srcs] == go
    for src, said in (('{{slice "héllo" 0 7}}', "index out of range: 7"), ('{{slice "héllo" 3 1}}', "invalid slice index: 3 > 1"),
                      ('{{slice "ab" 0 1 2}}', "cannot 3-index slice a string"), ('{{slice .L 0 2 1}}', "invalid slice index: 2 > 1")):
        with pytest.raises(TemplateError, match=f"error calling slice: {said}"):
            render(src, _GO_DATA)
    assert render('{{truncate "héllo" 2 | len}}|{{printf "%q" (truncate "héllo" 2)}}|{{truncate "héllo" 3}}', {}) == \
        '2|"h\\xc3"|hé'
    # a byte that is no UTF-8 (held as a surrogate escape) is one byte, not a UnicodeEncodeError
    assert render('{{len .X}}|{{index .X 1}}|{{printf "%q" (truncate .X 2)}}', {"X": "a\udcffb"}) == '3|255|"a\\xff"'


def test_nested_parentheses_are_parsed_in_one_pass_over_the_tokens(monkeypatch):
    """Each level of nesting copied and scanned the tokens inside it: 51,200 parentheses read
    every token ~330 times (until the recursion's "max expression depth exceeded"), 14 s of
    parsing.  Counted in reads of a token's kind, a few per token now, whatever the depth."""
    from lamina.cli import gotemplate
    from lamina.cli.gotemplate import TemplateError
    slot, reads = gotemplate._Tok.kind, [0]

    def read(tok):
        reads[0] += 1
        return slot.__get__(tok)
    monkeypatch.setattr(gotemplate._Tok, "kind", property(read, slot.__set__))
    for n in (150, 3200):
        src = "{{" + "(print " * n + "1" + ")" * n + "}}"
        reads[0] = 0
        try:
            gotemplate.parse(src)
        except TemplateError as e:
            assert "max expression depth exceeded" in str(e)
        tokens = 3 * n + 1
        assert reads[0] < 12 * tokens, (n, reads[0], tokens)
