"""Start-up of the lamina command: a verb imports what it needs, not every other verb's machinery.

The parser lists every verb, so each verb module is imported to register its arguments; what a
verb *does* (the bench, the docker image API, the unpacker, the registry client) is imported only
when that verb runs.  Checked through ``sys.modules`` of a child running ``python -m lamina``."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ocibuild
from registryfixture import reg, registry_env, skopeo_push  # noqa: F401

# Run ``python -m lamina ARGS`` as the CLI does, then print which lamina modules got imported.
CHILD = r"""
import json, runpy, sys
sys.argv = ["lamina"] + sys.argv[1:]
try:
    runpy.run_module("lamina", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
WATCHED = {"importlib.metadata", "subprocess", "urllib.request", "zipfile"}
print(json.dumps({"rc": code, "modules": sorted(m for m in sys.modules if m.startswith("lamina") or m in WATCHED)}),
      file=sys.stderr)
"""

# The work of other verbs: none of these is needed to parse a command line.
BENCH = {"lamina.bench"}
DOCKER_VERBS_API = {"lamina.images"}
UNPACKER = {"lamina.unpacker", "lamina.layer", "lamina.oci.dockerarchive"}
REGISTRY = {"lamina.registry", "lamina.registry.client", "lamina.registry.transport"}
STORE = {"lamina.store.store"}


def lamina_modules(*args, env=None):
    proc = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=120)
    doc = json.loads(proc.stderr.strip().splitlines()[-1])
    return doc["rc"], set(doc["modules"])


VERB_MODULES = {f"lamina.cli.{name}" for name in ("layers", "images", "store", "registry", "bench")}


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["pull", "--help"], ["unpack", "--help"],
                                  ["bench", "--help"], ["images", "--help"], ["manifest", "inspect", "--help"]])
def test_parsing_a_command_line_imports_no_verb_machinery(argv):
    rc, modules = lamina_modules(*argv)
    assert rc == 0
    assert modules & VERB_MODULES       # the verbs registered their arguments...
    heavy = (BENCH | DOCKER_VERBS_API | UNPACKER | REGISTRY | STORE) & modules
    assert heavy == set(), f"lamina {' '.join(argv)} imported {sorted(heavy)}"   # ...and nothing else


@pytest.mark.parametrize("argv, module", [
    (["unpack", "--help"], "layers"), (["--root", "/nonexistent", "pull", "--help"], "registry"),
    (["--root=/nonexistent", "images", "--help"], "images"), (["manifest", "inspect", "--help"], "registry"),
    (["fsck", "--help"], "store"), (["bench", "--help"], "bench")])
def test_a_verb_builds_only_its_own_part_of_the_parser(argv, module):
    """A command line naming a verb imports and registers only the module of that verb."""
    rc, modules = lamina_modules(*argv)
    assert rc == 0
    assert modules & VERB_MODULES == {f"lamina.cli.{module}"}


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["--ro", "/nonexistent", "--help"], ["nosuchverb"], []])
def test_the_top_level_still_sees_every_verb(argv):
    rc, modules = lamina_modules(*argv)
    assert modules & VERB_MODULES == VERB_MODULES


def test_the_verb_table_names_the_module_of_every_verb():
    """cli._VERB_MODULE, which a command line's verb is looked up in, is what each module registers."""
    import argparse
    import importlib
    from lamina import cli
    registered = {}
    for name in cli._VERB_MODULES:
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"lamina.cli.{name}").register(sub)
        registered.update(dict.fromkeys(sub.choices, name))
    assert cli._VERB_MODULE == registered


def test_usage_errors_of_a_verb_and_of_the_top_level():
    """Parsing only a verb's module changes no message: the verb's own usage errors, and the
    top level's list of verbs for an unknown one."""
    proc = subprocess.run([sys.executable, "-m", "lamina", "unpack"], capture_output=True, text=True)
    assert proc.returncode == 2 and "lamina unpack: error: the following arguments are required" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "lamina", "unpakc", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'unpakc'" in proc.stderr and "'bench'" in proc.stderr


def test_bench_help_still_names_the_tools_and_kinds():
    from lamina.bench import SYNTHETIC_KINDS, TOOLS
    out = subprocess.run([sys.executable, "-m", "lamina", "bench", "--help"], capture_output=True, text=True,
                         check=True, env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"}).stdout
    assert f"also run these tools, interleaved: {','.join(TOOLS)}" in out
    assert f"probing one dimension: {', '.join(SYNTHETIC_KINDS)}" in out


@pytest.fixture(scope="module")
def image(reg, tmp_path_factory):  # noqa: F811
    lay = ocibuild.Layout(tmp_path_factory.mktemp("lay") / "oci")
    m = lay.image([{"etc/hostname": b"startup\n"}, {"app/run": b"#!/bin/sh\n"}])
    lay.add(m, "1")
    skopeo_push(f"oci:{lay.root}:1", reg.host, "startup:1")


def test_pull_imports_neither_the_bench_nor_the_docker_verbs(reg, image, registry_env, tmp_path):  # noqa: F811
    import os
    rc, modules = lamina_modules("--root", tmp_path / "store", "pull", "-q", f"{reg.host}/startup:1",
                                 env=dict(os.environ))
    assert rc == 0
    assert "lamina.registry.pull" in modules and "lamina.store.snapshots" in modules   # it did pull
    assert (BENCH | DOCKER_VERBS_API) & modules == set()


def test_unpack_from_a_registry_imports_neither_the_bench_nor_the_docker_verbs(reg, image, registry_env,  # noqa: F811
                                                                                tmp_path):
    import os
    no_proxy_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    rc, modules = lamina_modules("unpack", f"docker://{reg.host}/startup:1", tmp_path / "rootfs",
                                 env=no_proxy_env)
    assert rc == 0
    assert (tmp_path / "rootfs" / "app" / "run").read_bytes() == b"#!/bin/sh\n"
    assert (BENCH | DOCKER_VERBS_API) & modules == set()
    # nothing is kept: the store's modules are not worth their import before the first request
    assert {m for m in modules if m == "lamina.store" or m.startswith("lamina.store.")} == set()
    # nor, with no credential helper configured, subprocess (urllib3's HTTP/2 version check
    # still imports importlib.metadata and zipfile: ~5 ms, left to urllib3)
    assert "subprocess" not in modules
    # nor, with no proxy in the environment, urllib.request (only its proxy lookup is used: ~2 ms)
    assert "urllib.request" not in modules


# A cycle that only the collector can free: reachable from __main__ until finalization clears it.
CYCLE_AT_EXIT = r"""
import sys
class Cycle:
    def __init__(self):
        self.me = self
    def __del__(self):
        sys.stderr.write("collected at exit\n")
keep = Cycle()
sys.argv = [sys.argv[1]] + sys.argv[2:]
"""
AS_PROGRAM = {
    "python -m lamina": "import runpy\nrunpy.run_module('lamina', run_name='__main__', alter_sys=True)",
    "console script": "exec(compile(open(sys.argv[0]).read(), sys.argv[0], 'exec'))",   # __name__ is __main__
}
IN_PROCESS = "from lamina.cli import main\nsys.exit(main())"


def exit_probe(how, argv, tmp_path):
    script = str(Path(sys.executable).with_name("lamina"))   # installed by pip from [project.scripts]
    env = {"PATH": "/usr/bin:/bin", "LAMINA_ROOT": str(tmp_path / "store")}
    proc = subprocess.run([sys.executable, "-c", CYCLE_AT_EXIT + how, script, *argv], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("program", sorted(AS_PROGRAM))
@pytest.mark.parametrize("argv", [["--version"], ["images", "--format", "{{.ID}}"]])
def test_the_program_exits_without_collecting_its_garbage(program, argv, tmp_path):
    """lamina's exit leaves its objects to the OS instead of walking them all with the collector
    (finalization would collect the cycle above); main() called in-process changes nothing."""
    assert "collected at exit" not in exit_probe(AS_PROGRAM[program], argv, tmp_path)
    assert "collected at exit" in exit_probe(IN_PROCESS, argv, tmp_path)   # the probe works
