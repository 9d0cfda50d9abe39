"""The installed package (a wheel built from the tracked files, as the Docker image builds it) carries every file
the code reads at run time: the web page and its samples, besides the modules."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "training", "service", "dnd")


def tracked(*paths: str) -> list[str]:
    r = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return r.stdout.split()


def test_wheel_holds_every_tracked_file_of_the_packages(tmp_path: Path) -> None:
    src = tmp_path / "src"  # a clean copy: no egg-info or build/ left by an editable install (setuptools reuses them)
    for f in tracked("pyproject.toml", "README.md", *PACKAGES):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    r = subprocess.run([*pip, "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    files = set(tracked(*PACKAGES))
    assert files and files <= inside, sorted(files - inside)
