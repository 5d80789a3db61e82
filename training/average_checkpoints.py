"""Average the weights of the last checkpoints of a run into a model folder (§6.1).

    python -m training.average_checkpoints --run_dir outputs/multi30k-de-en --last 5 --output_dir averaged

The paper averages the last 5 checkpoints (written at 10-minute intervals) for base models and the last 20 for
big models. The output folder holds the averaged model and the run's tokenizer, ready for `evaluate_bleu`.
"""

import argparse
from pathlib import Path

from transformers import AutoTokenizer

from hf_vanilla_transformer import VanillaTransformerForConditionalGeneration

from .checkpoints import load_average, usable_checkpoints


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="a training run's --output_dir")
    parser.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints to average")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)

    run = Path(args.run_dir)
    chosen = usable_checkpoints(run / "checkpoints")[: args.last]
    if not chosen:
        parser.error(f"no usable checkpoint under {run / 'checkpoints'}")
    # The run's architecture and generation config, from its final model.
    model = VanillaTransformerForConditionalGeneration.from_pretrained(run / "model")
    load_average(model, chosen)
    model.save_pretrained(args.output_dir)
    AutoTokenizer.from_pretrained(run / "model").save_pretrained(args.output_dir)
    print(f"Averaged {len(chosen)} checkpoints ({', '.join(p.name for p in chosen)}) into {args.output_dir}")
    return Path(args.output_dir)


if __name__ == "__main__":
    main()
