"""The behaviour contract lives in the repository (docs/spec.md), and what cites it can be trusted.

Comments, docstrings and documents cite the contract as "docs/spec.md §N" (also "§N-§M",
"§N and §M"). These tests read the repository's text files and check that every cited section
exists in docs/spec.md, that docs/spec.md keeps its ten numbered sections, and that nothing
still points to the old contract kept outside the repository (upper-case SPEC / SPEC.md).
Plain text scanning: no mybag import, well under a second.
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "docs" / "spec.md"
THIS = Path(__file__).resolve()

# What is scanned: the source, test and documentation trees, and the top-level files that
# describe or build the project.
SCANNED_DIRS = ["csrc", "python", "tests", "docs", "scripts", "examples", "cmake"]
SCANNED_FILES = ["README.md", "CMakeLists.txt", "setup.py", "pyproject.toml"]
TEXT_SUFFIXES = {".py", ".cpp", ".h", ".cu", ".cuh", ".md", ".sh", ".txt", ".cmake", ".in",
                 ".toml", ".cfg"}
SKIPPED_DIRS = {"build", "__pycache__", ".hypothesis", ".pytest_cache", "dist"}

SECTIONS = {1: "Signature", 2: "Bags", 3: "Reductions", 4: "max_norm", 5: "Gradients",
            6: "Bad input", 7: "Scripting and compiling", 8: "Fused optimizers",
            9: "Quantized tables", 10: "Sharded tables"}

# "spec.md" (or a Markdown link ending in "spec.md)") followed by one or more section numbers.
CITATION = re.compile(r"spec\.md\)?[ \t]*((?:§\s*\d+(?:\s*(?:-|–|,|and|or)\s*)?)+)")
SECTION_NUMBER = re.compile(r"§\s*(\d+)")
# The old, out-of-repository contract: "SPEC", "SPEC.md", "SPEC §3" (upper case, whole word).
OLD_REFERENCE = re.compile(r"\bSPEC\b")


def text_files(areas):
    for area in areas:
        path = ROOT / area
        if path.is_file():
            yield path
        elif path.is_dir():
            for f in sorted(path.rglob("*")):
                rel = f.relative_to(ROOT).parts
                if (f.is_file() and f.suffix in TEXT_SUFFIXES
                        and not SKIPPED_DIRS.intersection(rel)):
                    yield f


def lines_of(path):
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return []


def spec_sections():
    return {int(m.group(1)): m.group(2).strip()
            for m in re.finditer(r"^## (\d+)\. (.+)$", SPEC.read_text(encoding="utf-8"), re.M)}


def cited_sections(line):
    """The section numbers a line cites, e.g. "docs/spec.md §2-§3 and ..." -> [2, 3]."""
    return [int(n) for m in CITATION.finditer(line) for n in SECTION_NUMBER.findall(m.group(1))]


ALL_AREAS = SCANNED_DIRS + SCANNED_FILES


def test_spec_has_the_ten_sections():
    assert SPEC.is_file(), "docs/spec.md is missing"
    assert spec_sections() == SECTIONS


def test_citation_pattern():
    assert cited_sections("(docs/spec.md §4)") == [4]
    assert cited_sections("follow docs/spec.md §3 and §5 to the same rules") == [3, 5]
    assert cited_sections("per docs/spec.md §2-§3, in float64") == [2, 3]
    assert cited_sections("written from [docs/spec.md](spec.md) §2-§6") == [2, 6]
    assert cited_sections("see docs/spec.md for the contract") == []


def test_every_cited_section_exists():
    sections = spec_sections()
    bad, count = [], 0
    for f in text_files(ALL_AREAS):
        for number, line in enumerate(lines_of(f), 1):
            for n in cited_sections(line):
                count += 1
                if n not in sections:
                    bad.append(f"{f.relative_to(ROOT)}:{number}: §{n}: {line.strip()}")
    assert not bad, "citations of sections docs/spec.md does not have:\n" + "\n".join(bad)
    assert count > 0, "no citation of docs/spec.md found: is the scan looking in the right place?"


@pytest.mark.parametrize("area", [*SCANNED_DIRS, *SCANNED_FILES])
def test_no_reference_to_the_old_spec(area):
    bad = [f"{f.relative_to(ROOT)}:{number}: {line.strip()}"
           for f in text_files([area]) if f != THIS
           for number, line in enumerate(lines_of(f), 1) if OLD_REFERENCE.search(line)]
    assert not bad, ("references to the old SPEC.md outside the repository (cite "
                     "docs/spec.md §N instead):\n" + "\n".join(bad))
