"""Project habits a newcomer relies on: a version to quote, a changelog to add to, the checks CI runs."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml

from cds.cli import main
from tests.support.constants import ROOT


def test_version_is_the_one_in_pyproject(capsys: pytest.CaptureFixture[str]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"ketamine-cds {version}"


def test_the_changelog_keeps_an_unreleased_section_above_the_releases() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert "https://keepachangelog.com/" in text
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.MULTILINE)
    assert headings[0] == "Unreleased"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert version in headings[1:], f"the released version {version} has no section"


def test_pre_commit_runs_the_same_lint_and_type_checks_as_make_test() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    assert any(entry.startswith(".venv/bin/ruff check") for entry in entries)
    assert any(entry.startswith(".venv/bin/ruff format --check") for entry in entries)
    assert ".venv/bin/mypy" in entries
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "$(BIN)/ruff check ." in makefile
    assert "$(BIN)/mypy" in makefile


def test_every_phony_make_target_has_a_recipe() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    phony = re.search(r"^\.PHONY:(.*)$", makefile, flags=re.MULTILINE)
    assert phony is not None
    defined = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.MULTILINE))
    assert set(phony.group(1).split()) <= defined


def test_mypy_is_strict_over_the_package_the_benchmark_and_the_tools() -> None:
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert mypy["strict"] is True
    assert set(mypy["files"]) >= {"cds", "bench", "tools"}
