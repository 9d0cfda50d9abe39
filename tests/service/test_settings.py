"""DND_* settings and the deploy files that carry them."""

from pathlib import Path

import pytest

from dnd.service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DND_MAX_BATCH", "7")
    monkeypatch.setenv("DND_API_KEY", "k")
    monkeypatch.setenv("DND_BODY_LIMIT", "123")
    s = Settings()
    assert s.max_batch == 7 and s.api_key == "k" and s.body_limit == 123


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
