"""The Transformer of "Attention Is All You Need" (Vaswani et al., 2017) as a native Hugging Face model.

Importing the package registers the model with `AutoConfig`, `AutoModel` and `AutoModelForSeq2SeqLM`, and marks
its classes so that `save_pretrained` writes their source next to the weights (loadable with
`trust_remote_code=True` where this package is not installed), and registers the translation pipeline that
`hub.save_for_hub` saves with a model.
"""

from transformers import AutoConfig, AutoModel, AutoModelForSeq2SeqLM
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration_vanilla_transformer import VanillaTransformerConfig
from .modeling_vanilla_transformer import (
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
    VanillaTransformerPreTrainedModel,
)
from .pipeline_vanilla_transformer import TranslationPipeline
from .plotting import plot_attention
from .tokenization import check_tokenizer_matches_model, record_tokenizer, train_tokenizer, vocabulary_fingerprint

AutoConfig.register(VanillaTransformerConfig.model_type, VanillaTransformerConfig, exist_ok=True)
AutoModel.register(VanillaTransformerConfig, VanillaTransformerModel, exist_ok=True)
AutoModelForSeq2SeqLM.register(VanillaTransformerConfig, VanillaTransformerForConditionalGeneration, exist_ok=True)
VanillaTransformerConfig.register_for_auto_class()
VanillaTransformerModel.register_for_auto_class("AutoModel")
VanillaTransformerForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")
# Lets `TranslationPipeline(...).save_pretrained` declare the pipeline in config.json (`custom_pipelines`).
PIPELINE_REGISTRY.register_pipeline("translation", pipeline_class=TranslationPipeline, pt_model=AutoModelForSeq2SeqLM)

__all__ = [
    "VanillaTransformerConfig",
    "VanillaTransformerForConditionalGeneration",
    "VanillaTransformerModel",
    "VanillaTransformerPreTrainedModel",
    "TranslationPipeline",
    "check_tokenizer_matches_model",
    "plot_attention",
    "record_tokenizer",
    "train_tokenizer",
    "vocabulary_fingerprint",
]
