"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`) of the installed version, run on this model.

Their files come from the sdist of the installed transformers (`tests/transformers_common/fetch.py`); where it
cannot be downloaded, the module is skipped with the reason (failed instead where REQUIRE_TRANSFORMERS_COMMON=1, as
`.ci/run` sets it). Tests skipped below say why.
"""

import os
import sys
import unittest

import pytest
import torch
from conftest import tiny_config
from transformers.models.auto import modeling_auto
from transformers_common.fetch import common_tests_root

from hf_vanilla_transformer import (
    VanillaTransformerConfig,
    VanillaTransformerForConditionalGeneration,
    VanillaTransformerModel,
)

REQUIRED = os.environ.get("REQUIRE_TRANSFORMERS_COMMON") == "1"
if not REQUIRED:
    pytest.importorskip("parameterized", reason="the common tests need `parameterized` (pip install -e '.[dev]')")
try:
    sys.path.insert(0, str(common_tests_root()))
except RuntimeError as error:
    if REQUIRED:
        raise
    pytest.skip(f"transformers' common tests are unavailable: {error}", allow_module_level=True)

from transformers_common_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_common_tests.test_modeling_common import ModelTesterMixin, ids_tensor  # noqa: E402


@pytest.fixture(autouse=True)
def listed_like_a_built_in_model(monkeypatch):
    """The common tests pick labels and skip bare models by the names transformers lists for its own models."""
    monkeypatch.setitem(modeling_auto.MODEL_MAPPING_NAMES, "vanilla_transformer", "VanillaTransformerModel")
    monkeypatch.setitem(modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, "vanilla_transformer",
                        "VanillaTransformerForConditionalGeneration")


class VanillaTransformerModelTester:
    def __init__(self, parent, batch_size=3, seq_length=7, vocab_size=99):
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.encoder_seq_length = seq_length
        self.decoder_seq_length = seq_length
        self.key_length = seq_length
        self.vocab_size = vocab_size
        self.is_training = True
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4

    def get_config(self) -> VanillaTransformerConfig:
        return tiny_config(vocab_size=self.vocab_size, max_position_embeddings=64, dropout=0.1, attention_dropout=0.1)

    def prepare_config_and_inputs(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(4)
        input_ids[:, -1] = 2  # every source ends with </s>
        decoder_input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size).clamp(4)
        inputs = {"input_ids": input_ids, "decoder_input_ids": decoder_input_ids,
                  "attention_mask": torch.ones_like(input_ids), "decoder_attention_mask": torch.ones_like(input_ids)}
        return self.get_config(), inputs

    def prepare_config_and_inputs_for_common(self):
        return self.prepare_config_and_inputs()


class VanillaTransformerCommonTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VanillaTransformerModel, VanillaTransformerForConditionalGeneration)
    # `generate` is tested in test_generation.py: the sdist does not ship transformers' GenerationTesterMixin.
    all_generative_model_classes = ()
    is_encoder_decoder = True
    test_missing_keys = True

    def setUp(self):
        self.model_tester = VanillaTransformerModelTester(self)
        self.config_tester = ConfigTester(self, config_class=VanillaTransformerConfig, d_model=32, encoder_layers=2,
                                          encoder_attention_heads=4, vocab_size=99)

    def test_config(self):
        self.config_tester.run_common_tests()
