"""The README's Python API example runs as written (from the repository root), and its
set-up commands are the ones .ci/run and tests/run-all.sh rely on."""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_python_api_example_runs():
    text = _readme()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    assert "['sample:latest']" in out  # I.remove untagged what it was asked to
    assert out[-1] == "True"           # fsck of the store the example made is clean


def test_ci_runs_the_readme_test_command():
    text = _readme()
    setup = text[text.index("## Set up"):text.index("## Use")]
    commands = [c.strip() for c in re.findall(r"```sh\n(.*?)\n\s*```", setup, re.S)]
    assert commands[1] == "bash tests/run-all.sh"
    assert "bash tests/run-all.sh" in open(os.path.join(ROOT, ".ci", "run")).read()
    # command 1 makes the venv that run-all.sh reuses, and installs what the C extension needs
    assert "python3 -m venv .venv" in commands[0] and "python3-dev" in commands[0] and "gcc" in commands[0]
    run_all = open(os.path.join(ROOT, "tests", "run-all.sh")).read()
    assert ".venv" in run_all and "python3-venv" in run_all
