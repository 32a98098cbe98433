"""The README as a user reads it: every Python block runs, every shown value is checked, and CI
runs the README's commands word for word.

- ```python blocks run each on its own (a user copies one block at a time), in a temporary
  directory;
- ```pycon blocks (`>>>` prompts) run as doctests: the values they show are the values printed;
- a block may be kept from running only by an HTML comment right above it,
  `<!-- not run: REASON -->`, and only for GPU-only or network-only content;
- the install and test commands in the README's first ```sh block are the ones .ci/run runs.
"""

import contextlib
import doctest
import io
import os
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- not run: (?P<skip>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<body>.*?)```",
                   re.S)


def blocks(lang):
    found = []
    for m in BLOCK.finditer(README):
        if m.group("lang") == lang:
            line = README.count("\n", 0, m.start("body")) + 1
            found.append(pytest.param(m.group("body"), m.group("skip"), line, id=f"line{line}"))
    return found


def run_in(tmp_path, fn):
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        return fn()
    finally:
        os.chdir(old)


def skip_if_marked(reason):
    if reason is None:
        return
    assert re.search(r"\b(GPU|CUDA|network)\b", reason), (
        f"a README block may be left unrun only for GPU- or network-only content, not {reason!r}")
    if "network" in reason or not torch.cuda.is_available():
        pytest.skip(reason)


@pytest.mark.parametrize("body, skip, line", blocks("python"))
def test_python_block_runs(body, skip, line, tmp_path):
    skip_if_marked(skip)
    # Blank lines in front keep the line numbers of tracebacks the README's own.
    code = compile("\n" * (line - 1) + body, "README.md", "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        run_in(tmp_path, lambda: exec(code, {"__name__": "__readme__"}))


@pytest.mark.parametrize("body, skip, line", blocks("pycon"))
def test_shown_values_are_printed(body, skip, line, tmp_path):
    skip_if_marked(skip)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(body, {"__name__": "__readme__"}, "README.md", "README.md",
                              line - 1)
    assert test.examples, "a pycon block without >>> examples"
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    run_in(tmp_path, lambda: runner.run(test, out=out.write))
    assert runner.failures == 0, out.getvalue()


def test_every_block_is_checked_somewhere():
    # Blocks in other languages are checked by the tests named here; a new kind needs a test.
    checked = {"python", "pycon", "sh", "cmake", "cpp", "text", ""}
    langs = {m.group("lang") for m in BLOCK.finditer(README)}
    assert langs <= checked, f"README blocks of unchecked kinds: {sorted(langs - checked)}"
    assert blocks("python") and blocks("pycon")


def install_section_commands():
    """The command lines of the README's "Install and run" section: the two commands, then the
    one for a torch that is already installed."""
    section = README[README.index("## Install and run"):README.index("## Usage")]
    return [line.strip() for m in BLOCK.finditer(section) if m.group("lang") == "sh"
            for line in m.group("body").splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_verbatim():
    commands = install_section_commands()
    assert commands[:2] == [
        "pip install torch==2.14.1 ninja && pip install --no-build-isolation -e '.[test]' && "
        "python -m mybag",
        "python -m pytest tests -q",
    ], commands
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f"{command!r} is not a line of .ci/run"
    # Nothing a user would not set: no `export VAR=...` and no `VAR=value command`.
    for line in ci_lines:
        assert not re.match(r"(export\s+)?[A-Za-z_][A-Za-z0-9_]*=", line), f".ci/run sets {line!r}"


def test_cpp_recipe_is_what_the_cpp_tests_run():
    # The C++ tests (tests/frontends/test_cpp.py -> scripts/build_cpp.sh) build and consume the package
    # with exactly the README's commands.
    script = (ROOT / "scripts" / "build_cpp.sh").read_text().splitlines()
    sh_blocks = [m.group("body") for m in BLOCK.finditer(README) if m.group("lang") == "sh"]
    recipe = [line for body in sh_blocks[1:] for line in body.splitlines()
              if line.startswith("cmake") or line.startswith("./")]
    assert len(recipe) >= 5, recipe
    stripped = [line.strip() for line in script]
    for line in recipe:
        assert line in stripped, f"README's {line!r} is not run by scripts/build_cpp.sh"
