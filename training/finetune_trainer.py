"""Fine-tune a trained model with `transformers.Seq2SeqTrainer`, the way one fine-tunes a Marian model.

    python -m training.finetune_trainer --model_name_or_path outputs/multi30k-de-en/model \\
        --source_lang en --target_lang de --output_dir outputs/multi30k-en-de-finetuned \\
        --num_train_epochs 3 --learning_rate 3e-4 --per_device_train_batch_size 64 \\
        --eval_strategy epoch --save_strategy epoch --load_best_model_at_end --metric_for_best_model bleu \\
        --predict_with_generate --bf16

Every `Seq2SeqTrainingArguments` flag works (`--fp16`, `--gradient_accumulation_steps`, `--report_to`, ...);
`--label_smoothing_factor` is §5.4's 0.1 unless given (Seq2SeqTrainer's own default is 0: the model's loss is the
plain cross-entropy, as every HF model's), and its `eval_loss` is smoothed as the Trainer smooths it. The
data are those of `training.train` (the embedded Multi30k by default, a Hub dataset or local files); the model
is any saved folder or Hub repository of this model. The output folder holds the fine-tuned model, its tokenizer
and the translation pipeline.
"""

import logging
from dataclasses import dataclass, field

from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
)

from hf_vanilla_transformer import TranslationPipeline, check_tokenizer_matches_model
from hf_vanilla_transformer.metrics import bleu_compute_metrics

from .data import load_translation_dataset, tokenize

logger = logging.getLogger("training.finetune_trainer")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "a saved model folder or Hub repository id"})
    tokenizer_name: str | None = field(default=None, metadata={"help": "default: the model's"})


@dataclass
class DataArguments:
    source_lang: str = field(default="de")
    target_lang: str = field(default="en")
    dataset_name: str | None = field(default=None, metadata={"help": "a Hub dataset; default: embedded Multi30k"})
    dataset_config_name: str | None = field(default=None)
    train_file: str | None = field(default=None, metadata={"help": ".tsv, .jsonl or a parallel-text prefix"})
    validation_file: str | None = field(default=None)
    test_file: str | None = field(default=None)
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, Seq2SeqTrainingArguments))
    parser.set_defaults(label_smoothing_factor=0.1)  # §5.4
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path)
    check_tokenizer_matches_model(tokenizer, model.config)
    model.config.src_lang, model.config.tgt_lang = data_args.source_lang, data_args.target_lang

    with training_args.main_process_first(desc="dataset tokenization"):
        raw = load_translation_dataset(data_args.source_lang, data_args.target_lang, data_args.dataset_name,
                                       data_args.dataset_config_name, data_args.train_file,
                                       data_args.validation_file, data_args.test_file)
        limits = {"train": data_args.max_train_samples, "validation": data_args.max_eval_samples,
                  "test": data_args.max_eval_samples}
        for split, limit in limits.items():
            if split in raw and limit:
                raw[split] = raw[split].select(range(min(limit, len(raw[split]))))
        data = {split: tokenize(raw[split], tokenizer, data_args.source_lang, data_args.target_lang,
                                model.config.max_position_embeddings) for split in raw}

    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data.get("validation"),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        processing_class=tokenizer,
        compute_metrics=bleu_compute_metrics(tokenizer) if training_args.predict_with_generate else None,
    )
    metrics = {}
    if training_args.do_train or not (training_args.do_eval or training_args.do_predict):
        metrics.update(trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint).metrics)
        trainer.save_model()
        TranslationPipeline(model=trainer.model, tokenizer=tokenizer).save_pretrained(training_args.output_dir)
    if "validation" in data:
        metrics.update(trainer.evaluate(metric_key_prefix="eval"))
    if "test" in data and training_args.predict_with_generate:
        metrics.update(trainer.predict(data["test"], metric_key_prefix="test").metrics)
    trainer.save_metrics("all", metrics)
    logger.info("%s", metrics)
    return metrics


if __name__ == "__main__":
    main()
