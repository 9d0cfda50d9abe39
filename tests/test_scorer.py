"""The `path` scorer (detector/scorer.py, detector/trees.py): ranking, the exported tree walk, family mixtures."""

import pytest
import torch

from detector.scorer import PathScorer


@pytest.mark.parametrize("trees", [False, True])
def test_scorer_ranks_separable_data(trees: bool) -> None:
    g = torch.Generator().manual_seed(0)
    clean, attacked = torch.randn(200, 5, generator=g), torch.randn(100, 5, generator=g) + 2
    s = PathScorer.fit(clean, {"a": attacked}, trees=trees)
    assert s.score(attacked).mean() > s.score(clean).mean() + 2
    t = PathScorer.from_tensors(s.tensors())
    assert torch.equal(t.score(clean), s.score(clean)) and torch.equal(t.surrogate(clean), s.surrogate(clean))
    x = clean[:4].clone().requires_grad_(True)
    s.surrogate(x).sum().backward()  # the adaptive attack's gradient path
    assert x.grad.abs().sum() > 0


def test_tree_ensemble_walk_equals_sklearn() -> None:
    """The exported trees, walked by the compiled kernel, reach scikit-learn's leaves: the same log-odds up to summation
    order (a wrong leaf is off by >= 1e-3), including ties at split thresholds (the integer column)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    from detector.trees import TreeEnsemble

    g = torch.Generator().manual_seed(1)
    # float32 values (what path_features gives), held as float64 for scikit-learn
    x = torch.cat([torch.randn(300, 7, generator=g), torch.randint(0, 3, (300, 1), generator=g).float()], 1).double()
    y = ((x[:, 0] + x[:, 1] * x[:, 2] + x[:, 7]) > 0.5).double()
    clf = HistGradientBoostingClassifier(max_iter=40, max_leaf_nodes=15, random_state=0).fit(x.numpy(), y.numpy())
    # a second model with other trees (deeper, other target): both walked together, each summed into its own column
    clf2 = HistGradientBoostingClassifier(max_iter=25, max_leaf_nodes=40, random_state=0).fit(
        x.numpy(), (x[:, 3] > 0).numpy()
    )
    ens = TreeEnsemble.from_sklearn([clf, clf2])
    probe = torch.cat([x, torch.randn(50, 8, generator=g).double()])  # randn is float32: exact in float64
    want = torch.stack([torch.from_numpy(c.decision_function(probe.numpy())) for c in (clf, clf2)], 1)
    torch.testing.assert_close(ens.raw(probe), want, rtol=0, atol=1e-12)
    assert torch.equal(TreeEnsemble.from_tensors(ens.tensors()).raw(probe), ens.raw(probe))
    assert torch.equal(ens.raw(probe[:1]), ens.raw(probe)[:1])  # batched == unbatched
    assert ens.raw(probe[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match=r"expected \(N, F\) path features with F > 7 .* found shape \(350, 5\)"):
        ens.raw(probe[:, :5])  # too few columns would read past each row: refused, not walked
    # a scorer of one tree model stored without its group tensor
    one = TreeEnsemble.from_sklearn([clf]).tensors()
    del one["scorer.trees.group"]
    torch.testing.assert_close(TreeEnsemble.from_tensors(one).raw(probe)[:, 0], want[:, 0], rtol=0, atol=1e-12)


def test_family_scorer_is_the_mixture_log_odds_and_round_trips() -> None:
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(300, 4, generator=g)
    up, down = torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g)
    up[:, 0] += 3
    down[:, 1] -= 3  # two families that move different features in different directions
    s = PathScorer.fit(clean, {"up": up, "down": down}, [["up"], ["down"]], [0.0, -1.0])
    assert s.trees is not None and len(s.trees.baseline) == 2 and s.log_prior.tolist() == [0.0, -1.0]
    probe = torch.cat([torch.randn(50, 4, generator=g), up[:20], down[:20]])
    raw = s.family_scores(probe)
    want = torch.log(torch.exp(raw[:, 0]) + torch.exp(raw[:, 1] - 1)).float()
    torch.testing.assert_close(s.score(probe), want)
    assert s.score(up).median() > 0 and s.score(down).median() > 0  # each family caught by its own model
    assert torch.equal(PathScorer.from_tensors(s.tensors()).score(probe), s.score(probe))
    t = s.tensors()
    with pytest.raises(ValueError, match=r"one log prior per tree model, shape \(2,\)"):
        PathScorer.from_tensors(t | {"scorer.log_prior": t["scorer.log_prior"][:1]})
    with pytest.raises(ValueError, match="unexpected scorer tensors"):
        PathScorer.from_tensors(t | {"scorer.reference": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match="have no rows"):
        PathScorer.fit(clean, {"up": up}, [["up"], ["down"]])
    with pytest.raises(ValueError, match="one log prior per family"):
        PathScorer.fit(clean, {"up": up, "down": down}, [["up"], ["down"]], [0.0])
    # a family without rows drops out with its prior; a scorer of one model and no prior scores its log-odds
    one = PathScorer.fit(clean, {"up": up, "down": down[:0]}, [["up"], ["down"]], [0.0, -1.0])
    assert one.log_prior.tolist() == [0.0] and len(one.trees.baseline) == 1
    old = {k: v for k, v in one.tensors().items() if k not in ("scorer.log_prior", "scorer.trees.group")}
    torch.testing.assert_close(PathScorer.from_tensors(old).score(probe), one.trees.raw(probe)[:, 0].float())


def test_family_trees_are_prior_corrected_to_balanced_classes() -> None:
    """Unweighted fits corrected by log(N_k / N0): a family indistinguishable from clean scores log-odds ~0 whatever
    its share of the rows, where the raw unweighted fit would sit at log(3) for three times the clean rows."""
    from detector.trees import fit_family_trees

    g = torch.Generator().manual_seed(0)
    clean, same = torch.randn(200, 5, generator=g), torch.randn(600, 5, generator=g)
    trees = fit_family_trees(clean, [same], {"max_iter": 10, "max_leaf_nodes": 4, "random_state": 0})
    fresh = torch.randn(2000, 5, generator=g)
    assert abs(float(trees.raw(fresh).mean())) < 0.25
    assert abs(float(trees.baseline[0])) < 0.05  # log(600/200) removed from scikit-learn's baseline
    with pytest.raises(ValueError, match="every family"):
        fit_family_trees(clean, [same[:0]])
