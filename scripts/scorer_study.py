"""Scorer study, step 2: model choice for the `path` score on a validation split *inside* the calibration half
(30% of each of clean / FGSM / PGD held out). Prints validation AUROC for the logistic model, 12 MLPs and 3 boosted-tree settings;
the shipped TREE_PARAMS (lr 0.05, 600 trees, 31 leaves) came from this.

usage: python scripts/scorer_collect.py models/resnet20-decoupled paths.pt fgsm,pgd; python scripts/scorer_study.py paths.pt
       [--without-likelihoods]  (the 708 features the figures in docs/detector-studies.md were measured on, before
       session 10)
"""
import sys, torch, numpy as np, time
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.ensemble import HistGradientBoostingClassifier
from detector.scoring import path_features, without_likelihoods
from study_data import take_flag
OLD = take_flag("--without-likelihoods")
d = torch.load(sys.argv[1], weights_only=False); freq = d["freq"]
def F(part):
    lg, z = d[part]; f = path_features(z, lg.argmax(1), freq)
    return (without_likelihoods(f, [c.shape[1] for c in freq]) if OLD else f).double().numpy()
rng = np.random.default_rng(0)
parts = {k: F(f"cal_{k}") for k in ("clean", "fgsm", "pgd")}
# validation inside the calibration half: 30% of each set
tr, va = {}, {}
for k, v in parts.items():
    p = rng.permutation(len(v)); n = int(0.3 * len(v)); va[k], tr[k] = v[p[:n]], v[p[n:]]
X = np.concatenate([tr["clean"], tr["fgsm"], tr["pgd"]]); y = np.r_[np.zeros(len(tr["clean"])), np.ones(len(tr["fgsm"]) + len(tr["pgd"]))]
mu, sd = X.mean(0), np.maximum(X.std(0), 1e-3); S = lambda a: (a - mu) / sd
def auc(m, a):
    s0, s1 = m.predict_proba(S(va["clean"]))[:, 1], m.predict_proba(S(va[a]))[:, 1]
    return roc_auc_score(np.r_[np.zeros(len(s0)), np.ones(len(s1))], np.r_[s0, s1])
from sklearn.linear_model import LogisticRegression
m = LogisticRegression(C=0.01, class_weight="balanced", max_iter=5000).fit(S(X), y)
print("logistic C=0.01", f"fgsm {auc(m,'fgsm'):.3f} pgd {auc(m,'pgd'):.3f}", flush=True)
cfgs = [("mlp", h, a) for h in [(64,), (256,), (256, 64)] for a in (1e-3, 1e-2, 1e-1, 1.0)]
for kind, h, a in cfgs:
    t = time.time()
    m = MLPClassifier(hidden_layer_sizes=h, alpha=a, early_stopping=True, max_iter=500, random_state=0).fit(S(X), y)
    print(kind, h, a, f"fgsm {auc(m,'fgsm'):.3f} pgd {auc(m,'pgd'):.3f} ({time.time()-t:.0f}s, {m.n_iter_} it)", flush=True)
for lr, it, leaves in [(0.1, 300, 31), (0.05, 600, 31), (0.1, 300, 15)]:
    m = HistGradientBoostingClassifier(learning_rate=lr, max_iter=it, max_leaf_nodes=leaves, random_state=0).fit(S(X), y)
    print("hgb", lr, it, leaves, f"fgsm {auc(m,'fgsm'):.3f} pgd {auc(m,'pgd'):.3f}", flush=True)
