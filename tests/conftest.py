"""Shared fixtures: tiny models, a tokenizer learned on a slice of the embedded Multi30k, an offline Hub; and a
process that every test finds as the one before it found it (accelerate's state, threads, environment, signals)."""

import gzip
import io
import logging
import os
import runpy
import signal
import subprocess
import sys
import traceback
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT / "data" / "multi30k"

# Tests never reach the network: the Hub, datasets and evaluate work from local files only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The cores shared by pytest-xdist's workers (`-n auto`: one per core), so that workers do not oversubscribe them.
THREADS = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
os.environ["OMP_NUM_THREADS"] = str(THREADS)  # for the processes tests start (not the xdist controller's value)

import hf_vanilla_transformer  # noqa: E402  (after the environment above)
from hf_vanilla_transformer import VanillaTransformerConfig, VanillaTransformerForConditionalGeneration  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_process_state():
    """What one test sets in the process never reaches another, whatever the order: accelerate's singletons (an
    `Accelerator(mixed_precision="no")` would make the next one with "bf16" raise), torch's thread count, the
    environment and the SIGTERM handler that `training.train.cli` installs."""
    from accelerate.state import AcceleratorState, GradientState

    environment, handler = dict(os.environ), signal.getsignal(signal.SIGTERM)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)  # as accelerate's own test cases do after each test
    GradientState._reset_state()
    torch.set_num_threads(THREADS)
    os.environ.clear()
    os.environ.update(environment)
    signal.signal(signal.SIGTERM, handler)


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


def labelled_batch(tokenizer, pairs) -> dict:
    """The (source, target) `pairs` as one padded batch, the labels' padding -100 (what the loss ignores)."""
    batch = tokenizer([p[0] for p in pairs], text_target=[p[1] for p in pairs], padding=True, return_tensors="pt")
    batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
    return batch


def fit(model, batch, optimizer, steps: int, loss=lambda model, batch: model(**batch).loss) -> list[float]:
    """`steps` optimizer steps of `model` on `batch` (by `loss`, the model's own by default): the losses."""
    losses = []
    for _ in range(steps):
        value = loss(model, batch)
        value.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(value.item())
    return losses


def briefly_trained(tokenizer, pairs, **overrides):
    """A tiny model trained for a few dozen steps on §5.4's label-smoothed loss, as training does: it ends sentences
    and ranks hypotheses, though not well."""
    from training.recipe import label_smoothed_loss

    torch.manual_seed(0)
    model = VanillaTransformerForConditionalGeneration(tiny_config(src_lang="de", tgt_lang="en", **overrides))
    batch = labelled_batch(tokenizer, pairs[:64])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.98), eps=1e-9)
    tokens = (batch["labels"] != -100).sum()
    fit(model, batch, optimizer, 200,
        loss=lambda model, batch: label_smoothed_loss(model(**batch).logits, batch["labels"], 0.1) / tokens)
    return model.eval()


def step_run(tmp_path, accelerator, model, tokenizer, pairs, count: int):
    """A `training.train.Run` whose `train_step` trains `model` (ε_ls 0.1, no clipping, §5.3's Adam) as `accelerator`
    prepares it, with its optimizer, and `count` Multi30k pairs as features with their collator."""
    import argparse

    from transformers import DataCollatorForSeq2Seq

    from training.recipe import paper_optimizer
    from training.train import Run

    optimizer, scheduler = paper_optimizer(model, warmup_steps=4, learning_rate=1e-3)
    run = Run(argparse.Namespace(max_grad_norm=0.0, label_smoothing=0.1), accelerator, tmp_path, unwrapped=model)
    run.model, run.optimizer, run.scheduler = accelerator.prepare(model, optimizer, scheduler)
    features = [{"input_ids": tokenizer(de)["input_ids"], "labels": tokenizer(text_target=en)["input_ids"]}
                for de, en in pairs[:count]]
    return run, optimizer, DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100), features


def assert_each_sentence_keeps_its_own_limit(tokenizer, to_backend) -> None:
    """A model that never ends a sentence (its EOS output weights are zero) runs into §6.1's limit: each sentence
    of a batch gets its own source length + 50 tokens (the last an EOS) from `to_backend(model)` (another backend's
    model of it), in one batch, as from the model's `generate` alone."""
    torch.manual_seed(3)
    model = VanillaTransformerForConditionalGeneration(tiny_config(tie_word_embeddings=False)).eval()
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = 0.0
    backend = to_backend(model)
    sources = [tokenizer(text)["input_ids"] for text in read_multi30k("val", "de", 4)]
    assert len({len(ids) for ids in sources}) > 1
    outputs = backend.generate(**tokenizer.pad({"input_ids": sources}, return_tensors="pt"), num_beams=1)
    for ids, output in zip(sources, outputs.tolist()):
        alone = model.generate(input_ids=torch.tensor([ids]), num_beams=1)[0].tolist()
        assert alone == [t for t in output if t != tokenizer.pad_token_id] and len(alone) == 1 + len(ids) + 50


@pytest.fixture
def model() -> VanillaTransformerForConditionalGeneration:
    torch.manual_seed(0)
    return VanillaTransformerForConditionalGeneration(tiny_config()).eval()


def run_module(module: str, *args, stdin: str = "") -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` run in this process, as `-m` runs it (`runpy`), where the new process is not what a
    test checks: its exit status, stdout and stderr (its log records included), and an uncaught exception's
    traceback on stderr with status 1, as the interpreter would end."""
    stdout, stderr, status = io.StringIO(), io.StringIO(), 0
    handler = logging.StreamHandler(stderr)
    logging.getLogger().addHandler(handler)
    standard_input = io.TextIOWrapper(io.BytesIO(stdin.encode() if isinstance(stdin, str) else stdin))
    try:
        with (mock.patch.object(sys, "argv", [module, *map(str, args)]),
              mock.patch.object(sys, "stdin", standard_input),
              redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings()):
            warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package",
                                    category=RuntimeWarning)  # runpy's note: the package imported the module
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        status = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        if isinstance(exit_.code, str):
            stderr.write(exit_.code + "\n")
    except Exception:  # noqa: BLE001 (what the interpreter prints)
        stderr.write(traceback.format_exc())
        status = 1
    finally:
        logging.getLogger().removeHandler(handler)
    return subprocess.CompletedProcess([module, *args], status, stdout.getvalue(), stderr.getvalue())


def run_python(code: str, cwd: Path, block_package: bool = False, timeout: int = 300, env: dict | None = None):
    """Run `code` in a fresh interpreter; with `block_package`, `hf_vanilla_transformer` cannot be imported there."""
    # As in this process (pyproject.toml), a deprecation met by the project's code, here its remote-code copy, fails.
    prelude = ("import warnings\nfor category in (DeprecationWarning, FutureWarning):\n"
               "    warnings.filterwarnings('error', category=category, module='transformers_modules')\n")
    prelude += "import sys\nsys.modules['hf_vanilla_transformer'] = None\n" if block_package else ""
    environment = {**os.environ, "HF_HOME": str(cwd / "hf_home"), **(env or {})}
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
