"""Does a `make candidate NAME=X` pair beat the shipped one by the rule written down before its report was read?

Rule (written down before any candidate's report was read), candidate against the shipped bundles and report:
  1. `path` AUROC >= 0.90 on FGSM and on PGD (the shipping floor);
  2. the mean `path` AUROC over the four attacks falls by no more than 0.01;
  3. the fine-tune is within 1.0 point of its own dense bundle;
  4. the dense bundle reaches 88.5% (the target the candidate exists for);
  5. the fine-tune keeps the other model targets: mean FLOPs <= 0.70 x dense and dynamic filters >= 15% of
     the gated ones.
`python scripts/ship_check.py b256-e200` reads runs/X-dense/metrics.json, runs/X-decoupled/metrics.json and
runs/X-evaluation/report.json next to models/*/metrics.json and reports/evaluation/report.json; prints each figure and
each rule, and exits 0 only if every rule holds (1 otherwise, 2 if a file is missing or the pair does not match).
The dense bundle is the one the fine-tune started from, as its config.json records it (`init.path`, checked against
`init.weights_sha256`), so a candidate made with `make candidate DENSE=...` is judged against its real teacher; a
fine-tune without that record falls back to runs/X-dense.

`python scripts/ship_check.py --all` prints one markdown table of every finished candidate under runs/ (a
runs/X-decoupled/metrics.json with a runs/X-evaluation/report.json) beside the shipped pair, with the rules each fails:
the table in docs/candidates.md is its output. A candidate whose fine-tune has the shipped fine-tune's weights
(config.json `weights_sha256`) is the shipped pair itself: its row says so instead of judging it against itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ATTACKS = ("fgsm", "pgd", "cw", "deepfool")


def load(path: Path) -> dict:
    if not path.is_file():
        print(f"missing {path}: run the candidate to the end first (make candidate NAME=...)", file=sys.stderr)
        sys.exit(2)
    return json.loads(path.read_text())


def dense_of(root: Path, decoupled: Path, fallback: Path) -> Path:
    if not (decoupled / "config.json").is_file():
        return fallback
    init = load(decoupled / "config.json").get("init") or {}
    if "path" not in init:
        return fallback
    dense = root / init["path"]
    found = load(dense / "config.json").get("weights_sha256")
    if found != init.get("weights_sha256"):
        print(
            f"{decoupled} was fine-tuned from weights {init.get('weights_sha256')} but {dense} now holds {found}: "
            "the pair does not match",
            file=sys.stderr,
        )
        sys.exit(2)
    return dense


def figures(dense: Path, decoupled: Path, report: Path) -> dict[str, float]:
    d, f, r = load(dense / "metrics.json"), load(decoupled / "metrics.json"), load(report / "report.json")
    out = {
        "dense": d["test_accuracy"],
        "decoupled": f["test_accuracy"],
        "flops": f["flops_ratio"],
        "dynamic_share": f["filter_states"]["dynamic"] / f["filter_states"]["total"],
    }
    out |= {a: r["attacks"][a]["detectors"]["path"]["auroc"] for a in ATTACKS}
    out["mean"] = sum(out[a] for a in ATTACKS) / len(ATTACKS)
    return out


def details(dense: Path, decoupled: Path, report: Path) -> dict[str, float]:
    """figures() plus what the table shows beside them: filter states, Mahalanobis AUROC, the adaptive attack."""
    f, r = load(decoupled / "metrics.json"), load(report / "report.json")
    out = figures(dense, decoupled, report)
    out |= {f"maha_{a}": r["attacks"][a]["detectors"]["mahalanobis"]["auroc"] for a in ATTACKS}
    out |= {k: f["filter_states"][k] for k in ("activated", "dynamic", "silent")}
    ad = r.get("adaptive", {})
    # reports of the robust-accuracy protocol: the worst case at 8/255; earlier reports: one 20-step PGD
    out["kept"] = ad["budgets"]["8/255"]["worst_case"] if "budgets" in ad else ad.get("accuracy_kept", float("nan"))
    return out


def rules(cand: dict[str, float], ship: dict[str, float]) -> list[tuple[str, bool]]:
    """The shipping rule, written down before the candidates' reports were read; (text, holds) per clause."""
    return [
        ("path AUROC >= 0.90 on FGSM and PGD", cand["fgsm"] >= 0.90 and cand["pgd"] >= 0.90),
        ("mean path AUROC not lower by more than 0.01", cand["mean"] >= ship["mean"] - 0.01),
        ("fine-tune within 1.0 point of its dense", cand["decoupled"] >= cand["dense"] - 0.010),
        ("dense accuracy >= 88.5%", cand["dense"] >= 0.885),
        ("FLOPs <= 0.70 x dense and dynamic filters >= 15%", cand["flops"] <= 0.70 and cand["dynamic_share"] >= 0.15),
    ]


def weights_of(bundle: Path) -> str | None:
    config = bundle / "config.json"
    return json.loads(config.read_text()).get("weights_sha256") if config.is_file() else None


def table(root: Path) -> str:
    """Markdown: the shipped pair, then every finished candidate under runs/, sorted by name."""
    shipped_weights = weights_of(root / "models" / "resnet20-decoupled")
    ship = details(
        root / "models" / "resnet20-dense", root / "models" / "resnet20-decoupled", root / "reports" / "evaluation"
    )
    runs = root / "runs"
    names = sorted(
        n
        for n in (p.name.removesuffix("-decoupled") for p in runs.glob("*-decoupled"))
        if (runs / f"{n}-decoupled" / "metrics.json").is_file() and (runs / f"{n}-evaluation" / "report.json").is_file()
    )
    head = (
        "| pair | dense | decoupled | gap (points) | FLOPs | activated / dynamic / silent | `path` AUROC FGSM / PGD / "
        "CW / DeepFool | mean | Mahalanobis FGSM / PGD / CW / DeepFool | adaptive: accuracy kept | rules failed |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]

    def row(label: str, x: dict[str, float], failed: str) -> str:
        def four(pre: str) -> str:
            return " / ".join(f"{x[pre + a]:.3f}" for a in ATTACKS)

        return (
            f"| {label} | {100 * x['dense']:.2f}% | {100 * x['decoupled']:.2f}% | "
            f"{100 * (x['decoupled'] - x['dense']):+.2f} | {x['flops']:.3f} | "
            f"{x['activated']} / {x['dynamic']} / {x['silent']} | {four('')} | {x['mean']:.4f} | "
            f"{four('maha_')} | {100 * x['kept']:.1f}% | {failed} |"
        )

    rows.append(row("shipped (`models/`)", ship, "(the reference the rules compare against)"))
    for name in names:
        decoupled = runs / f"{name}-decoupled"
        cand = details(dense_of(root, decoupled, runs / f"{name}-dense"), decoupled, runs / f"{name}-evaluation")
        failed = "; ".join(text for text, ok in rules(cand, ship) if not ok) or "none: ship it"
        if shipped_weights is not None and weights_of(decoupled) == shipped_weights:
            failed = "none: shipped (the weights in `models/`)"
        rows.append(row(f"`{name}`", cand, failed))
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="the candidate's NAME (runs/NAME-dense, -decoupled, -evaluation)")
    ap.add_argument("--all", action="store_true", help="print the table of every finished candidate instead")
    ap.add_argument("--root", default=".", help="repository root")
    a = ap.parse_args()
    if (a.name is None) == (not a.all):
        ap.error(f"expected a candidate NAME or --all (exactly one), found name={a.name!r}, --all={a.all}")
    root = Path(a.root)
    if a.all:
        print(table(root))
        return 0
    decoupled = root / "runs" / f"{a.name}-decoupled"
    dense = dense_of(root, decoupled, root / "runs" / f"{a.name}-dense")
    print(f"candidate: {dense} -> {decoupled}")
    cand = figures(dense, decoupled, root / "runs" / f"{a.name}-evaluation")
    ship = figures(
        root / "models" / "resnet20-dense", root / "models" / "resnet20-decoupled", root / "reports" / "evaluation"
    )
    print(f"{'':14s} {'shipped':>9s} {'candidate':>10s}")
    for k in ("dense", "decoupled", "flops", "dynamic_share", *ATTACKS, "mean"):
        print(f"{k:14s} {ship[k]:9.4f} {cand[k]:10.4f}")
    judged = rules(cand, ship)
    for text, ok in judged:
        print(f"{'holds ' if ok else 'FAILS '} {text}")
    verdict = all(ok for _, ok in judged)
    print("ship it" if verdict else "do not ship")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())
