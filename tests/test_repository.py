"""Checks of the text the repository ships: it may only point at what a clone of it has.

A reader of a fresh clone has no design document outside the repository, no machine the code was
written on and no tracker the comments could cite by number; text that says otherwise is stale.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
THIS_FILE = Path(__file__).resolve().relative_to(REPO).as_posix()
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".html", ".sql", ".conf"}
TEXT_NAMES = {"Makefile", "Dockerfile", ".env.example", ".gitignore", ".dockerignore"}
# Measurement records name the folders they were measured in; they are data, not instructions.
NOT_CHECKED = ("bench/results/",)


def shipped_text_files() -> list[str]:
    """Tracked and new (not ignored) text files, relative to the repository, outside hidden folders."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [
        name
        for name in listed
        if (Path(name).suffix in TEXT_SUFFIXES or Path(name).name in TEXT_NAMES)
        and not any(part.startswith(".") for part in Path(name).parts[:-1])
        and not name.startswith(NOT_CHECKED)
        and name != THIS_FILE
        and (REPO / name).is_file()
    ]


def offending_lines(pattern: re.Pattern[str], names: list[str]) -> list[str]:
    found = []
    for name in names:
        for number, line in enumerate((REPO / name).read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{name}:{number}: {line.strip()}")
    return found


@pytest.fixture(scope="module")
def files() -> list[str]:
    names = shipped_text_files()
    assert "README.md" in names and "include/harvest/pipeline.py" in names  # the listing works
    return names


def test_no_text_refers_to_a_design_document_the_repository_does_not_have(files: list[str]):
    design_docs = [name for name in files if Path(name).name.upper() == "DESIGN.MD"]
    if design_docs:
        pytest.skip(f"the repository has {design_docs}")
    assert offending_lines(re.compile(r"DESIGN\.md", re.IGNORECASE), files) == []


def test_no_text_names_a_folder_of_the_machine_it_was_written_on(files: list[str]):
    # An absolute /work/, /home/<user>/, /Users/ or /root/ path; not `data/work/` or `s3://b/work/`.
    machine_path = re.compile(r"(?<![\w}./:-])/(?:work|home|Users|root)/")
    assert offending_lines(machine_path, files) == []


def test_comments_carry_no_milestone_or_issue_numbers(files: list[str]):
    # Numbers of a tracker a clone does not have: "(issue 4)", "issue #12", "milestone 3".
    milestone = re.compile(r"\bissue\s*#?\d+|\bmilestone\s*#?\d+", re.IGNORECASE)
    code = [
        name for name in files if name.startswith(("include/", "dags/", "plugins/", "scripts/", "tests/"))
    ]
    assert offending_lines(milestone, code) == []


def test_no_text_describes_a_host_circuit_breaker_the_code_does_not_have(files: list[str]):
    # `skipped` means the batch deadline had passed; nothing opens a per-host circuit.
    assert offending_lines(re.compile(r"circuit", re.IGNORECASE), files) == []
