"""The data of a run prepared ahead of it, as `fairseq-preprocess` does: read and cached, the §5.1 BPE vocabulary
learned, every split tokenized, for the training command's own flags.

    python -m training.prepare --recipe wmt14-en-de-base       # once, for as long as it takes, on each machine
    accelerate launch --num_processes 8 -m training.train --recipe wmt14-en-de-base   # finds all of it cached

Everything goes to the `datasets` cache (HF_DATASETS_CACHE), keyed by the text and the tokenizer: nothing is written
in `--output_dir`, and a launch with the same flags loads it in seconds. Without this step a launched run prepares
the data itself, its other processes waiting for it without a deadline.
"""

import sys
import time
from pathlib import Path

import datasets
from accelerate import Accelerator

from . import train


def main(argv=None) -> dict:
    """Prepare what `training.train` with these flags reads first; returns the pairs of each split."""
    args = train.parse_args(argv)
    train.set_up_logging(main_process=True)
    if args.mixed_precision == "auto":
        args.mixed_precision = train.native_mixed_precision()
    output = Path(args.output_dir)
    # The tokenizer a resumed run keeps is the one its folder holds: that one tokenizes here too, without a write.
    resumes = args.resume_from_checkpoint is not None and (output / "tokenizer" / "tokenizer.json").is_file()
    run = train.Run(args, Accelerator(cpu=True), output, writer=False, saved_tokenizer=resumes)
    train.main_job_choices(args, run.checkpoint_root)
    with train.data_cache_failures():
        train.load_data(run)
        train.build(run)
        train.tokenize_data(run)
    pairs = {split: len(data) for split, data in run.data.items()}
    minutes = ", ".join(f"{name} {value:.2f}" for name, value in run.phases.items())
    print(f"Prepared {', '.join(f'{count} {split}' for split, count in pairs.items())} pairs in "
          f"{(time.time() - run.started) / 60:.2f} minutes ({minutes}), cached in {datasets.config.HF_DATASETS_CACHE}: "
          "launch training.train with the same flags", file=sys.stderr)
    return pairs


def cli(argv=None) -> None:
    try:
        main(argv)
    except train.RunStopped as error:
        raise SystemExit(str(error)) from None


if __name__ == "__main__":
    cli()
