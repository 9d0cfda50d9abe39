"""The installed package (a wheel built from the tracked files, as `make wheel` and the Docker image build it):
every file the code reads at run time (the web page, besides the modules), only the top-level names
the project declares, and, opt-in (`slow`), a fresh venv outside the repository that serves /predict from it."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("detector", "dnd")  # the library and its applications (the CLI, training, the service)


def tracked(*paths: str) -> list[str]:
    r = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    return r.stdout.split()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy: no egg-info or build/ left by an editable install (setuptools reuses them)
    for f in tracked("pyproject.toml", "README.md", *PACKAGES):
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    r = subprocess.run([*pip, "-w", str(tmp), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = tmp.glob("*.whl")
    return whl


def test_wheel_holds_every_tracked_file_of_the_packages(wheel: Path) -> None:
    inside = set(zipfile.ZipFile(wheel).namelist())
    files = set(tracked(*PACKAGES))
    assert files and files <= inside, sorted(files - inside)


def test_wheel_declares_only_its_own_top_level_names(wheel: Path) -> None:
    inside = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in inside if not n.split("/")[0].endswith(".dist-info")}
    assert tops == set(PACKAGES)


def test_dependencies_are_ranges_and_exact_versions_live_in_constraints() -> None:
    import tomllib

    def norm(name: str) -> str:  # PEP 503: case and runs of -_. do not matter
        return re.sub(r"[-_.]+", "-", name).lower()

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert deps and not [d for d in deps if "==" in d], deps
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pinned = {norm(line.split("==")[0]) for line in lines if "==" in line}
    names = {norm(re.split(r"[\[<>=;! ]", d, maxsplit=1)[0]) for d in deps}
    assert names <= pinned, names - pinned


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_serves_predict(wheel: Path, tmp_path: Path) -> None:
    """pip install of the wheel into a new venv, run from a folder outside the repository: `dnd serve` with a bundle
    path answers POST /predict. The venv borrows the project venv's installed dependencies through a path entry (no
    download), never its editable install of this project."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], capture_output=True, text=True
    ).stdout.strip()
    deps = next(p for p in sys.path if p.endswith("site-packages"))
    Path(site, "project-dependencies.pth").write_text(deps + "\n")  # a plain path: its .pth hooks stay unread
    bundle = tmp_path / "bundle"
    shutil.copytree(ROOT / "models" / "resnet20-decoupled", bundle)
    where = subprocess.run(
        [str(py), "-c", "import detector, dnd; print(detector.__file__, dnd.__file__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert where.returncode == 0 and str(ROOT) not in where.stdout and site in where.stdout, where
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = subprocess.Popen(
        [str(venv / "bin" / "dnd"), "serve", "--model", str(bundle), "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
    )
    try:
        for _ in range(600):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        img = (ROOT / "models" / "resnet20-decoupled" / "samples" / "clean-cat.png").read_bytes()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=img, headers={"content-type": "image/png"}, method="POST"
        )
        body = json.loads(urllib.request.urlopen(req, timeout=30).read())
        assert body["predictions"][0]["label"] == "cat" and isinstance(body["predictions"][0]["is_adversarial"], bool)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
        assert b"<html" in page.lower()  # the web page travels in the wheel
    finally:
        server.terminate()
        server.wait(timeout=30)
