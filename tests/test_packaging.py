"""`pip install .` must give a working service: the knowledge (hooks, rules, profiles) ships in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return next(out.glob("ketamine_cds-*.whl"))


def test_wheel_carries_every_knowledge_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("hooks", "rules", "fhir_profiles"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in {".json", ".yaml", ".md"}:
                packaged = f"cds/_knowledge/{path.relative_to(ROOT).as_posix()}"
                assert packaged in names, f"{packaged} missing from the wheel"
    assert "cds/storage/migrations/env.py" in names
    assert any(name.endswith("entry_points.txt") for name in names)


def test_installed_wheel_loads_its_own_knowledge(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    probe = (
        "import cds.paths as p, cds.clinical.knowledge as k; root = p.knowledge_root(); "
        "assert '_knowledge' in str(root), root; kn = k.load_knowledge(); print(len(kn.rules))"
    )
    # -I isolates from the checkout (no cwd on sys.path); the target dir comes first, the venv supplies deps.
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    env = {"PYTHONPATH": ":".join([str(target), *site_packages])}
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:0] = {[str(target)]!r}; {probe}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert int(result.stdout.strip()) >= 20
