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
