"""argparse value types shared by the command modules: one-line messages naming the flag and what is allowed."""

from __future__ import annotations

import argparse
import math


def positive_int(name: str):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r}: an integer >= 1") from None
        if v < 1:
            raise argparse.ArgumentTypeError(f"{name}={text!r}: an integer >= 1")
        return v

    return parse


def nonneg_float(name: str):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}={text!r}: a finite number >= 0") from None
        if not v >= 0 or math.isinf(v):
            raise argparse.ArgumentTypeError(f"{name}={text!r}: a finite number >= 0")
        return v

    return parse
