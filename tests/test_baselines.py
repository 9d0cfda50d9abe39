import torch

from detector.baselines import Mahalanobis, msp_score


def test_msp_score() -> None:
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(msp_score(logits), torch.tensor([-1 / (1 + torch.e**-10), -0.5]))


def test_mahalanobis_on_hand_built_features() -> None:
    # two classes at (-1, 0) and (1, 0), each with offsets (+-0.5, 0) and (0, +-2): the pooled covariance is
    # proportional to diag(0.125, 2) (pytorch-ood's Gaussian keeps the scatter unnormalised: a constant factor, which
    # neither a ROC nor a threshold calibrated on clean images sees)
    offsets = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 2.0], [0.0, -2.0]])
    f = torch.cat([offsets + torch.tensor([-1.0, 0.0]), offsets + torch.tensor([1.0, 0.0])])
    y = torch.tensor([0] * 4 + [1] * 4)
    m = Mahalanobis.fit(f, y)
    # 1 unit off a mean along x costs 16x what it costs along y (variance 0.125 against 2); the closest class counts
    s = m.score(torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])).double()
    assert s[2] == 0 and s[0] > 0
    assert torch.allclose(s / s[0], torch.tensor([1.0, 1 / 16, 0.0, 1.0], dtype=torch.float64))


def test_lee_preprocessing_matches_the_ensemble_at_zero_and_moves_towards_the_class_means() -> None:
    """eps = 0 is the plain feature ensemble; a small step against each layer's distance gradient lowers that
    layer's distance (Lee et al.'s preprocessing makes in-distribution inputs look more so)."""
    from detector.baselines import MahalanobisEnsemble, pooled_activations
    from detector.baselines.lee import lee_distances
    from tests.conftest import tiny_decoupled_model

    model = tiny_decoupled_model().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(60, 3, 32, 32, generator=g)
    logits, pooled = pooled_activations(model, x)
    ens = MahalanobisEnsemble.fit(pooled, logits.argmax(1) % 2)  # two classes, both present
    d = lee_distances(model, ens, x[:12], eps_grid=(0.0, 0.002), batch_size=5)
    assert d.shape == (2, 12, len(pooled))
    assert torch.allclose(d[0], torch.from_numpy(ens.distances([p[:12] for p in pooled])), rtol=1e-3, atol=1e-3)
    assert (d[1] < d[0]).float().mean() > 0.8


def test_lee_cross_fit_scores_every_image_out_of_fold_at_its_threshold() -> None:
    from detector.baselines.lee import cross_fit_per_attack

    g = torch.Generator().manual_seed(0)
    clean = torch.randn(3, 200, 4, generator=g)
    attacked = torch.randn(3, 100, 4, generator=g)
    attacked[2] += 2.0  # only the third noise magnitude separates the classes
    s_c, s_a, chosen = cross_fit_per_attack(clean, attacked)
    assert chosen == [2, 2]
    assert s_c.shape == (200,) and s_a.shape == (100,)
    assert 0.0 < (s_c > 0).mean() < 0.15 and (s_a > 0).mean() > 0.8  # ~5% of clean above each fold's threshold
