import torch

from detector.baselines import Mahalanobis, msp_score


def test_msp_score() -> None:
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(msp_score(logits), torch.tensor([-1 / (1 + torch.e**-10), -0.5]))


def test_mahalanobis_on_hand_built_features() -> None:
    # two classes at (-1, 0) and (1, 0), each with offsets (+-0.5, 0) and (0, +-2): covariance diag(0.125, 2)
    offsets = torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 2.0], [0.0, -2.0]])
    f = torch.cat([offsets + torch.tensor([-1.0, 0.0]), offsets + torch.tensor([1.0, 0.0])])
    y = torch.tensor([0] * 4 + [1] * 4)
    m = Mahalanobis.fit(f, y, 2)
    assert torch.allclose(m.means, torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    # 1 unit off a mean along x costs 1/0.125 = 8, along y 1/2 = 0.5; the closest class counts
    s = m.score(torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]]))
    assert torch.allclose(s, torch.tensor([8.0, 0.5, 0.0, 8.0]))
