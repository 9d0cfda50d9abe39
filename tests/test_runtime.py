import platform
import sys

import pytest

from detector.runtime import tune_malloc


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_malloc_applies_on_glibc() -> None:
    assert tune_malloc() is True


def test_tune_malloc_respects_the_users_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert tune_malloc() is False


def test_check_device_names_what_it_expected(tmp_path) -> None:
    import torch

    from detector.bundle import load_model
    from detector.runtime import check_device

    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"^--device 'foo': expected cpu, cuda or cuda:N$"):
        check_device("foo", "--device")
    with pytest.raises(ValueError, match=r"^device 'mps': expected cpu, cuda or cuda:N$"):
        check_device("mps")
    # load_model checks it before reading any file: the (absent) bundle is never looked at
    with pytest.raises(ValueError, match="device 'foo'"):
        load_model(tmp_path / "no-bundle", "foo")
