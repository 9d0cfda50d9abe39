"""Argument types shared by the sub-commands: each refuses a bad value while parsing, before any model, data or
attack is touched, with "expected ..., got ..."."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
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
    """ "fgsm,PGD" -> ["fgsm", "pgd"]; every name must be a known attack."""
    from detector.attacks import ATTACKS

    names = [n.strip().lower() for n in csv.split(",") if n.strip()]
    bad = [n for n in names if n not in ATTACKS]
    if bad or not names:
        raise ValueError(f"unknown attack(s) {bad or csv!r}; expected a comma-separated list of {sorted(ATTACKS)}")
    return names


def add_device(p: argparse.ArgumentParser, default: str | None = "cpu", threads: bool = True) -> None:
    p.add_argument("--device", default=default, help="cpu (default) or cuda / cuda:N")
    if threads:
        p.add_argument("--threads", type=count, default=0, help="torch CPU threads (0 = torch's default)")
