"""The training step (dnd/training/step.py): bf16 autocast and torch.compile against the eager float32 step."""

import pytest
import torch


@pytest.mark.parametrize("decouple", [False, True])
def test_bf16_step_keeps_float32_losses_and_gradients_reach_every_parameter(decouple: bool) -> None:
    from dataclasses import replace

    from detector.config import ModelConfig
    from detector.losses import DecouplingLoss
    from detector.networks import build_model
    from detector.stats import dense_macs
    from dnd.training.config import make_config
    from dnd.training.step import step_loss

    torch.manual_seed(0)
    model = build_model(replace(ModelConfig(), decoupled=decouple)).to(memory_format=torch.channels_last).train()
    loss_mod = DecouplingLoss([u.cout for u in model.units()], 10) if decouple else None
    x, y = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    results = {}
    for bf16 in (False, True):
        cfg = make_config(decouple, {"bf16": bf16, "lambda_kd": 0.0})
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same gate noise in both passes
        loss, terms = step_loss(model, loss_mod, x, y, cfg, 0.1, dense_macs(model))
        loss.backward()
        results[bf16] = (loss.detach(), terms)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert all(t.dtype in (torch.float32, torch.float64) for t in terms.values())
        for name, p in model.named_parameters():  # master weights and their gradients stay float32
            assert p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32, name
            assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"no gradient reached {name}"
    # the autocast really ran (not bit-identical), and the cross-entropy stays close to the float32 one
    ce32, ce16 = results[False][1]["ce"], results[True][1]["ce"]
    assert not torch.equal(ce32, ce16) and abs(float(ce32) - float(ce16)) < 0.05 * float(ce32)


@pytest.mark.slow  # torch.compile's inductor takes about a minute on 2 CPU cores: `make test-all`
def test_compiled_step_matches_eager() -> None:
    # --compile must change the speed only: with deterministic paths (no noise, all hard, as in the final epochs)
    # the compiled forward + losses give the eager values and gradients. Small network: compilation takes ~1 min.
    import copy

    from detector.config import ModelConfig
    from detector.losses import DecouplingLoss
    from detector.networks import build_model
    from dnd.training.config import TrainConfig
    from dnd.training.step import compiled_step_loss, step_loss

    torch.manual_seed(0)
    base = build_model(ModelConfig(decoupled=True, widths=(8, 16, 32), blocks_per_stage=1))
    base.set_gate_training(noise_std=0.0, p_hard=1.0)
    teacher = build_model(ModelConfig(widths=(8, 16, 32), blocks_per_stage=1)).eval().requires_grad_(False)
    xb, yb = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    cfg = TrainConfig(lambda_kd=1.0)
    grads, losses = [], []
    for fn in (step_loss, compiled_step_loss()):
        m = copy.deepcopy(base).train()
        torch.manual_seed(1)  # the same MI heads for both
        loss_mod = DecouplingLoss([u.cout for u in m.units()], 10)
        loss, terms = fn(m, loss_mod, xb, yb, cfg, torch.tensor(0.1, dtype=torch.float64), 1, teacher)
        loss.backward()
        losses.append((float(loss.detach()), {k: float(v) for k, v in terms.items()}))
        grads.append([p.grad.clone() for p in (*m.parameters(), *loss_mod.parameters())])
    assert losses[0][0] == pytest.approx(losses[1][0], rel=1e-4)
    assert losses[0][1] == pytest.approx(losses[1][1], rel=1e-4, abs=1e-6)
    gate_grads = [g for g, (n, _) in zip(grads[0], base.named_parameters()) if ".gate." in n]
    assert gate_grads and all(g.abs().sum() > 0 for g in gate_grads)  # the comparison covers live gate gradients
    for ge, gc in zip(*grads):
        torch.testing.assert_close(gc, ge, rtol=1e-3, atol=1e-5)
