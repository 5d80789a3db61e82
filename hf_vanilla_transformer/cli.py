"""What the command lines of the package and of its training scripts share."""

import argparse


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a beam size, a batch size, a count of steps)."""
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0 (a count where 0 means none)."""
    value = whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: give 0 or more")
    return value


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def available_device(text: str) -> str:
    """An argparse type: a torch device this machine has ("cpu", "cuda", "cuda:1", ...)."""
    import torch

    try:
        torch.empty(0, device=text)
    except (AssertionError, RuntimeError) as error:  # a CPU build of torch asserts; a missing GPU raises
        raise argparse.ArgumentTypeError(f"{text!r} is not a device of this machine ({error})") from None
    return text
