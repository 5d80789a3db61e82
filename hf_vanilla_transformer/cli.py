"""What the command lines of the package and of its training scripts share."""

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a beam size, a batch size, a count of steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value
