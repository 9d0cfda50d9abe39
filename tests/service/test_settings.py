"""DND_* settings and the deploy files that carry them."""

import shutil
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DND_MAX_BATCH", "7")
    monkeypatch.setenv("DND_API_KEY", "k")
    monkeypatch.setenv("DND_BODY_LIMIT", "123")
    s = Settings()
    assert s.max_batch == 7 and s.api_key == "k" and s.body_limit == 123


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client")
def test_compose_file_is_valid() -> None:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker client without the compose plugin")
    r = subprocess.run(["docker", "compose", "config", "--quiet"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "env, field",
    [({"DND_DEVICE": "foo"}, "device"), ({"DND_THRESHOLD": "nan"}, "threshold"), ({"DND_MAX_BATCH": "0"}, "max_batch")],
)
def test_bad_settings_are_refused_at_start_up(env: dict[str, str], field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValidationError) as e:
        Settings()
    assert e.value.errors()[0]["loc"] == (field,)
