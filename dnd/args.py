"""Argument types shared by the sub-commands: each refuses a bad value while parsing, before any model, data or
attack is touched, with "expected ..., got ..."."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def checked(parse: Callable[[str], Any], ok: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse type: `parse` the text, refuse it unless `ok` holds."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return convert


count = checked(int, lambda n: n >= 0, "a whole number >= 0")  # image and thread counts (0 = all / the default)
port = checked(int, lambda n: 1 <= n <= 65535, "a TCP port from 1 to 65535")  # uvicorn exits silently on 99999
rate = checked(float, lambda r: 0 <= r < 1, "a rate from 0 to below 1 (0.05 = 5%)")
finite = checked(float, math.isfinite, "a finite number")  # a NaN threshold would flag nothing


def attack_names(csv: str) -> list[str]:
    """ "fgsm,PGD,transfer-ti@models/vgg19-dense" -> ["fgsm", "pgd", "transfer-ti@models/vgg19-dense"]; every name
    must be a known attack, and a transferred one may name the bundle it is crafted on after "@" (checked here, before
    hours of attacks)."""
    from detector.attacks import ATTACKS, attack_spec, split_name
    from detector.bundle import CONFIG

    names = []
    for raw in (n.strip() for n in csv.split(",") if n.strip()):
        base, source = split_name(raw)
        names.append(base.lower() + (f"@{source}" if source is not None else ""))
    bad = [n for n in names if split_name(n)[0] not in ATTACKS]
    if bad or not names:
        raise ValueError(f"unknown attack(s) {bad or csv!r}; expected a comma-separated list of {sorted(ATTACKS)}")
    for name in names:
        attack_spec(name)  # "@" only on a transferred attack
        if (source := split_name(name)[1]) is not None and not (Path(source) / CONFIG).is_file():
            raise ValueError(f"attack {name!r}: {source} is no bundle (no {CONFIG} in it)")
    return names


def add_device(p: argparse.ArgumentParser, default: str | None = "cpu", threads: bool = True) -> None:
    p.add_argument("--device", default=default, help="cpu (default) or cuda / cuda:N")
    if threads:
        p.add_argument("--threads", type=count, default=0, help="torch CPU threads (0 = torch's default)")
