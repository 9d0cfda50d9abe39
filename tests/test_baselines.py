import torch

from detector.baselines import Mahalanobis, msp_score


def test_msp_score() -> None:
    logits = torch.tensor([[10.0, 0.0], [0.0, 0.0]])
    assert torch.allclose(msp_score(logits), torch.tensor([-1 / (1 + torch.e**-10), -0.5]))


def test_mahalanobis_on_hand_built_features() -> None:
    # two classes at (-1, 0) and (1, 0); within-class spread 0.5 along x and 2 along y
    f = torch.tensor([[-1.5, -2.0], [-0.5, 2.0], [0.5, -2.0], [1.5, 2.0]])
    y = torch.tensor([0, 0, 1, 1])
    m = Mahalanobis.fit(f, y, 2)
    assert torch.allclose(m.means, torch.tensor([[-1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    # covariance diag(0.25, 4): a point 1 unit off along x costs 4, along y costs 0.25
    s = m.score(torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]))
    assert torch.allclose(s, torch.tensor([4.0, 0.25, 0.0]))
