"""`pipeline("translation")` for this model.

transformers 5 removed its `translation` task, but `pipeline()` still honours a pipeline that a model declares in
`config.json` (`custom_pipelines`). This file is that pipeline: every save of the model (`save_pretrained`,
`Seq2SeqTrainer.save_model`, `push_to_hub`, `hub.save_for_hub`) declares it and writes it next to the weights, so

    pipeline("translation", model="user/name", trust_remote_code=True)("Ein Hund läuft.")
    # [{'translation_text': 'A dog is running.'}]

works with or without this package installed. It imports only `transformers` and the tokenizer's checks.
"""

import logging

from transformers import Pipeline

from .tokenization import check_tokenizer_matches_model, warn_on_unknown_input

logger = logging.getLogger(__name__)
# The `custom_pipelines` entry of config.json that makes `pipeline("translation", ...)` load this file.
CONFIG_ENTRY = {"translation": {"impl": "pipeline_vanilla_transformer.TranslationPipeline",
                                "pt": ["AutoModelForSeq2SeqLM"]}}


class TranslationPipeline(Pipeline):
    """Translate a string or a list of strings, as transformers 4's translation pipeline did.

    A string gives `[{"translation_text": ...}]` (one dict per `num_return_sequences`), a list gives one such
    result per string (flattened when each holds one translation). Keyword arguments other than `src_lang`,
    `tgt_lang` and `truncation` go to `model.generate` (`num_beams`, `max_new_tokens`, ...); `batch_size`
    batches inputs.
    """

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_tokenizer_matches_model(self.tokenizer, self.model.config)

    def _sanitize_parameters(self, src_lang=None, tgt_lang=None, truncation=None, **generate_kwargs):
        for name, requested in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
            supported = getattr(self.model.config, name, None)
            if requested is not None and supported is not None and requested != supported:
                raise ValueError(
                    f"This model translates {self.model.config.src_lang} to {self.model.config.tgt_lang}; "
                    f"{name}={requested!r} is not supported"
                )
        preprocess_params = {} if truncation is None else {"truncation": truncation}
        return preprocess_params, generate_kwargs, {}

    def __call__(self, inputs, **kwargs):
        if isinstance(inputs, list):  # name the item: a batch would otherwise fail without saying which
            for number, text in enumerate(inputs):
                if not isinstance(text, str) or not text.strip():
                    what = "empty" if isinstance(text, str) else f"a {type(text).__name__}"
                    raise ValueError(f"Item {number} of the inputs is {what}: the pipeline translates non-empty "
                                     "strings")
        results = super().__call__(inputs, **kwargs)
        if isinstance(inputs, list) and all(len(result) == 1 for result in results):
            return [result[0] for result in results]
        return results

    def preprocess(self, text, truncation=False):
        if not isinstance(text, str):
            raise TypeError(f"The translation pipeline takes strings, got {type(text).__name__}")
        if not text.strip():
            raise ValueError("The text to translate is empty")
        encoded = self.tokenizer(text, return_tensors="pt", truncation=truncation)
        warn_on_unknown_input(encoded["input_ids"].tolist(), self.tokenizer, self.model.config, logger)
        return encoded

    def _forward(self, model_inputs, **generate_kwargs):
        batch_size = model_inputs["input_ids"].shape[0]
        output_ids = self.model.generate(**model_inputs, **generate_kwargs)
        return {"output_ids": output_ids.reshape(batch_size, -1, output_ids.shape[-1])}  # (B, sequences, length)

    def postprocess(self, model_outputs):
        return [
            {"translation_text": self.tokenizer.decode(ids, skip_special_tokens=True)}
            for ids in model_outputs["output_ids"][0]
        ]
