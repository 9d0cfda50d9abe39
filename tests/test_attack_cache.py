"""Attack results kept on disk (detector/attack_cache.py): reused only under an equal key, never half-written."""

from pathlib import Path

import torch

from detector.attack_cache import AttackCache, tensor_sha256
from detector.attacks import run_attack, save_attack_set


def _counted_fgsm(model_and_data, calls: list[int]):
    """FGSM on the tiny model's images, counting each time it really runs."""
    m, x, y = model_and_data

    def attack() -> object:
        calls.append(1)
        return run_attack(m, "fgsm", x, y)

    return attack


def test_attack_sets_are_attacked_again_for_other_weights_or_seed(model_and_data, tmp_path: Path) -> None:
    # a retrained bundle evaluated into the same OUT must not be scored on images that fooled the network before it
    _, x, _ = model_and_data
    calls = []
    attack = _counted_fgsm(model_and_data, calls)

    def images() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x_adv": x + 0.01}

    for sha, expected in [("a" * 64, 1), ("a" * 64, 1), ("b" * 64, 2), ("b" * 64, 2)]:
        cache = AttackCache(tmp_path, {"seed": "0", "model": sha})
        s = cache.attack_set("fgsm", len(x), attack)
        cache.tensors("fit-fgsm", images, offered=str(len(x)))
        assert len(calls) == 2 * expected and s.meta["model"] == sha and s.meta["seed"] == 0
    again = AttackCache(tmp_path, {"seed": "1", "model": "b" * 64}).tensors("fit-fgsm", images, offered=str(len(x)))
    assert torch.equal(again["x_adv"], x + 0.01) and len(calls) == 5  # another seed also attacks again


def test_a_transferred_attack_is_crafted_again_on_another_source(model_and_data, tmp_path: Path) -> None:
    """`dnd evaluate --source OTHER` into the same OUT: images crafted on the old source network are not reused."""
    _, x, _ = model_and_data
    calls = []
    attack = _counted_fgsm(model_and_data, calls)
    cache = AttackCache(tmp_path, {"seed": "0", "model": "a" * 64})
    for source, expected in [("s" * 64, 1), ("s" * 64, 1), ("t" * 64, 2)]:
        s = cache.attack_set("transfer", len(x), attack, source=source)
        assert len(calls) == expected and s.meta["source"] == source
    del s.meta["source"]  # a set saved before sets recorded their source: crafted on an unknown network
    save_attack_set(s, tmp_path / "transfer.safetensors")
    cache.attack_set("transfer", len(x), attack, source="t" * 64)
    assert len(calls) == 3


def test_tensors_round_trip_exactly_and_only_under_the_same_key(tmp_path: Path) -> None:
    adv, success = torch.rand(5, 3, 4, 4), torch.tensor([True, False, True, True, False])
    calls = []

    def run() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x_adv": adv, "success": success}

    cache = AttackCache(tmp_path, {"model": "m"})
    cache.tensors("pgd-set0", run, radii="2,4")
    got = cache.tensors("pgd-set0", run, radii="2,4")
    assert len(calls) == 1 and torch.equal(got["x_adv"], adv) and torch.equal(got["success"], success)
    cache.tensors("pgd-set0", run, radii="8")  # other radii: attacked again, and that result replaces the file
    cache.tensors("pgd-set0", run, radii="8")
    assert len(calls) == 2
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temp name, then renamed


def test_no_directory_or_no_save_writes_nothing(tmp_path: Path) -> None:
    calls = []

    def run() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"x_adv": torch.zeros(2)}

    for _ in range(2):
        AttackCache(None, {}).tensors("fgsm", run)
        AttackCache(tmp_path / "c", {}, save=False).tensors("fgsm", run)
    assert len(calls) == 4 and not (tmp_path / "c").exists()
    AttackCache(tmp_path / "c", {}).tensors("fgsm", run)
    AttackCache(tmp_path / "c", {}, save=False).tensors("fgsm", run)  # a worker process still reads what is there
    assert len(calls) == 5


def test_fingerprint_tells_images_apart() -> None:
    x = torch.rand(4, 3, 8, 8)
    assert tensor_sha256(x) == tensor_sha256(x.clone())
    assert tensor_sha256(x) != tensor_sha256(x[:3]) and tensor_sha256(x) != tensor_sha256(x.double())
    y = x.clone()
    y[3, 2, 7, 7] += 1e-3
    assert tensor_sha256(x) != tensor_sha256(y)
