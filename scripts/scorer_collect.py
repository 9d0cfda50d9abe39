"""Scorer study, step 1: clean and attacked paths of a bundle on both test halves, cached for step 2.

usage: python scripts/scorer_collect.py BUNDLE OUT.pt fgsm,pgd[,cw,deepfool]   (~25 min on 2 cores with all four)
"""
import sys, torch
from detector.bundle import load_model
from detector.profiles import load_profiles
from detector.data import load_split, to_unit_float
from detector.calibration import split_test
from detector.attacks import run_attack
from detector.stats import collect_paths
torch.set_num_threads(2)
bundle, out, attacks = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
model = load_model(bundle); prof = load_profiles(bundle)
test = load_split(".data", "test")
cal, ev = split_test(test.y, 10)
res = {"freq": prof.freq}
for part, idx in (("cal", cal), ("ev", ev)):
    x, y = to_unit_float(test.x[idx]), test.y[idx]
    logits, z = collect_paths(model, x)
    ok = logits.argmax(1) == y
    res[f"{part}_clean"] = (logits[ok], [zl[ok] for zl in z])
    for a in attacks:
        s = run_attack(model, a, x[ok], y[ok])
        lg, za = collect_paths(model, s.x_adv[s.success])
        res[f"{part}_{a}"] = (lg, za)
        print(part, a, s.success_rate, flush=True)
torch.save(res, out)
