"""Shared fixtures: tiny models, a tokenizer learned on a slice of the embedded Multi30k, an offline Hub."""

import gzip
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT / "data" / "multi30k"

# Tests never reach the network: the Hub, datasets and evaluate work from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

import hf_vanilla_transformer  # noqa: E402  (after the environment above)
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration  # noqa: E402


def read_multi30k(split: str, lang: str, limit: int | None = None) -> list[str]:
    with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as file:
        lines = file.read().splitlines()
    return lines[:limit]


@pytest.fixture(scope="session")
def pairs() -> list[tuple[str, str]]:
    """2,000 German-English training pairs of Multi30k."""
    return list(zip(read_multi30k("train", "de", 2000), read_multi30k("train", "en", 2000)))


@pytest.fixture(scope="session")
def tokenizer(pairs):
    return hf_vanilla_transformer.train_tokenizer([s for pair in pairs for s in pair], vocab_size=600)


def tiny_config(**overrides) -> VanillaTransformerConfig:
    return VanillaTransformerConfig.tiny(**{"vocab_size": 600, **overrides})


@pytest.fixture
def model() -> VanillaTransformerForConditionalGeneration:
    torch.manual_seed(0)
    return VanillaTransformerForConditionalGeneration(tiny_config()).eval()


def run_python(code: str, cwd: Path, block_package: bool = False, timeout: int = 300, env: dict | None = None):
    """Run `code` in a fresh interpreter; with `block_package`, `hf_vanilla_transformer` cannot be imported there."""
    import subprocess

    # As in this process (pyproject.toml), a deprecation met by the project's code, here its remote-code copy, fails.
    prelude = ("import warnings\nfor category in (DeprecationWarning, FutureWarning):\n"
               "    warnings.filterwarnings('error', category=category, module='transformers_modules')\n")
    prelude += "import sys\nsys.modules['hf_vanilla_transformer'] = None\n" if block_package else ""
    environment = {**os.environ, "HF_HOME": str(cwd / "hf_home"), **(env or {})}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
