"""Argument types and the usage error shared by every `invad` subcommand (worker and producers)."""

from __future__ import annotations

import argparse


class UsageError(ValueError):
    """A command-line flag or environment value that cannot work: printed without a traceback, exit status 2."""


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (raises ArgumentTypeError naming the value otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer (a whole number >= 1)")
    return value
