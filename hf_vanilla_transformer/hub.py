"""Sharing a trained model on the Hugging Face Hub: the Hub-ready folder, its model card, and `push`.

    python -m hf_vanilla_transformer.hub push --model DIR --repo_id user/name [--private] [--dry_run]

A Hub-ready folder holds the model (safetensors, config with `auto_map` and `custom_pipelines`, generation config,
the modeling, configuration and pipeline source), the tokenizer, `training_results.json` (the run's real numbers)
and `README.md`, the model card rendered from `model_card.md` with those numbers.
"""

import argparse
import copy
import json
import logging
import re
import string
import sys
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub import errors as hub_errors
from huggingface_hub.utils import validate_repo_id

from .ctranslate2_backend import export_ctranslate2
from .decoding import EXTRA_OUTPUT_TOKENS, LENGTH_PENALTY, NUM_BEAMS
from .loading import sha256_file
from .onnx_backend import FOLDER as ONNX_FOLDER
from .onnx_backend import ONNX_FILES, TRANSFORMERS_JS, TRANSFORMERS_JS_FILES, check_export, export_onnx, usage
from .pipeline_vanilla_transformer import TranslationPipeline
from .tokenization import record_tokenizer

logger = logging.getLogger(__name__)

MODEL_CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
RESULTS_NAME = "training_results.json"
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", RESULTS_NAME)
CTRANSLATE2_FOLDER = "ctranslate2"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
CTRANSLATE2_FILES = tuple(f"{CTRANSLATE2_FOLDER}/{name}" for name in (
    "model.bin", "config.json", "shared_vocabulary.json", *TOKENIZER_FILES, "generation_config.json", "README.md"))
# What `save_for_hub` and a training run write: `push` uploads these and nothing else.
UPLOADED_FILES = (*REQUIRED_FILES, *TOKENIZER_FILES, "README.md", "generation_config.json",
                  "configuration_vanilla_transformer.py", "modeling_vanilla_transformer.py",
                  "pipeline_vanilla_transformer.py", "tokenization.py", "kernels.py", "decoding.py",
                  "learning_curve.png", "attention.png", *CTRANSLATE2_FILES, *ONNX_FILES, *TRANSFORMERS_JS_FILES)
# A Hub out of reach, offline, refusing or failing: the HTTP library's errors (httpx; httpx2 from huggingface_hub 2).
HUB_UNREACHABLE = (hub_errors.HTTPError, hub_errors.OfflineModeIsEnabled)
CTRANSLATE2_USAGE = """The folder `{folder}/` holds the model exported to [CTranslate2](https://github.com/OpenNMT/CTranslate2)
(weights `{quantization}`), several times faster than `generate` on CPUs; its README says how to use it, e.g.
`python -m hf_vanilla_transformer.translate --model {folder} --backend ctranslate2 "{example}"`.
"""


NOT_EVALUATED = "Not evaluated: the run's data had no validation or test split to score it on.\n"
UNSCORED = (  # the card of a model without a score: no model-index, and the sentences that give the score say so
    (re.compile(r"model-index:\n(?:(?:- |  ).*\n)+"), ""),
    (re.compile(r"\*\*sacreBLEU \$\{bleu\}\*\* on .*\n"), NOT_EVALUATED),
    (re.compile(r"\$\{dataset\} `\$\{eval_split\}`: \*\*sacreBLEU.*?\$\{paper_bleu_line\}\n", re.S), NOT_EVALUATED),
)
# How the model card names each `position_embedding_type`.
POSITIONS = {"sinusoidal": "sinusoidal positions (as in the paper)",
             "learned": "learned positional embeddings (Table 3, row E)",
             "rope": "rotary positions (RoPE) in self-attention", "alibi": "ALiBi self-attention biases"}


def model_card_values(model) -> dict:
    """What the model card says of the architecture, read off the model."""
    config = model.config
    return {
        "source_lang": config.src_lang or "source",
        "target_lang": config.tgt_lang or "target",
        "encoder_layers": config.encoder_layers,
        "decoder_layers": config.decoder_layers,
        "d_model": config.d_model,
        "ffn_dim": config.encoder_ffn_dim,
        "heads": config.encoder_attention_heads,
        "norm_position": "pre-LN" if config.normalize_before else "post-LN (as in the paper)",
        "positions": POSITIONS[config.position_embedding_type],
        "vocab_size": config.vocab_size,
        "parameters": f"{model.num_parameters() / 1e6:.1f}M",
        "generation_num_beams": model.generation_config.num_beams,
        "generation_length_penalty": model.generation_config.length_penalty,
    }


def render_model_card(values: dict, template: str | Path = MODEL_CARD_TEMPLATE) -> str:
    """`model_card.md` with its `${name}` fields filled from `values`; a missing value raises `KeyError`. A model
    whose run had no split to evaluate on (no `bleu`) gets a card that says so, without a score or model-index."""
    values = {"repo_id": f"your-username/{values.get('model_name', 'model')}", "ctranslate2_usage": "",
              "onnx_usage": "",
              "paper_bleu_line": "", "example_source": "Ein Hund läuft über die Wiese.",
              "extra_output_tokens": EXTRA_OUTPUT_TOKENS, "generation_num_beams": NUM_BEAMS,
              "generation_length_penalty": LENGTH_PENALTY, **values}  # the last three: folders saved before them
    if values.get("onnx"):
        values["onnx_usage"] = usage(values["repo_id"], values["example_source"], values["decoder_start_token_id"],
                                     values["eos_token_id"], values.get("transformers_js_limit"))
    text = Path(template).read_text()
    if "bleu" not in values:
        for pattern, replacement in UNSCORED:
            text = pattern.sub(replacement, text, count=1)
    return string.Template(text).substitute(values)


def save_for_hub(folder: str | Path, model, tokenizer, results: dict,
                 ctranslate2_quantization: str | None = None, onnx: bool = False) -> Path:
    """Write the Hub-ready folder: model, tokenizer and translation pipeline (with their source), results, card;
    with `ctranslate2_quantization` ("float32", "int8", ...), also the CTranslate2 export in `ctranslate2/`; with
    `onnx`, also the ONNX export (float32 and int8) in `onnx/`."""
    folder = Path(folder)
    non_finite = [name for name, tensor in model.state_dict().items() if not tensor.isfinite().all()]
    if non_finite:
        raise ValueError(f"The model's weights are not finite (NaN or infinity in {', '.join(non_finite[:3])}"
                         f"{', ...' if len(non_finite) > 3 else ''}): it diverged in training, and is not saved")
    record_tokenizer(model.config, tokenizer)
    tokenizer = copy.deepcopy(tokenizer)  # saved with the model's length limit; the caller's keeps its own
    tokenizer.model_max_length = model.config.max_position_embeddings  # `truncation=True` cuts to what the model takes
    weights = folder / "model.safetensors"
    replaced = sha256_file(weights) if weights.is_file() else None
    TranslationPipeline(model=model, tokenizer=tokenizer).save_pretrained(folder)
    if sha256_file(weights) != replaced:  # an export of other weights, not made again below, is not left beside these
        made_again = {**dict.fromkeys(CTRANSLATE2_FILES, ctranslate2_quantization is not None),
                      **dict.fromkeys(ONNX_FILES + TRANSFORMERS_JS_FILES, onnx)}
        stale = [name for name, made in made_again.items() if not made and (folder / name).is_file()]
        for name in stale:
            (folder / name).unlink()
        if stale:
            logger.warning("%s: removed %s, exported from the weights this save replaced (export them again: "
                           "--export_ctranslate2 / --export_onnx)", folder, ", ".join(stale))
    values = {**model_card_values(model), "model_name": folder.name, **results}
    if ctranslate2_quantization is not None:
        export_ctranslate2(folder, folder / CTRANSLATE2_FOLDER, ctranslate2_quantization, force=True)
        values["ctranslate2_usage"] = CTRANSLATE2_USAGE.format(
            folder=CTRANSLATE2_FOLDER, quantization=ctranslate2_quantization,
            example=values.get("example_source", "Ein Hund läuft über die Wiese."))
    if onnx:
        export_onnx(folder, force=True)
        values.update(onnx=True, decoder_start_token_id=model.config.decoder_start_token_id,
                      eos_token_id=model.config.eos_token_id)
        if (folder / TRANSFORMERS_JS).is_dir():
            values["transformers_js_limit"] = model.config.max_position_embeddings
    (folder / RESULTS_NAME).write_text(json.dumps(values, indent=2))
    try:
        (folder / "README.md").write_text(render_model_card(values))
    except KeyError as missing:
        logger.warning("No model card for %s: the results lack %s (was the model evaluated?)", folder, missing)
    return folder


def files_to_upload(folder: str | Path) -> tuple[list[str], list[str]]:
    """The files `push` sends (those of `UPLOADED_FILES` that the folder holds as plain files) and those it leaves
    behind (any other file, subfolder or symbolic link), as names relative to the folder. A folder without one of
    `REQUIRED_FILES` as a plain file (missing, or a symbolic link as in a Hub cache snapshot) raises."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder: pass the `model` folder a training run wrote")
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a Hub-ready folder: {', '.join(missing)} missing")
    linked = [name for name in REQUIRED_FILES if (folder / name).is_symlink()]
    if linked:
        raise ValueError(f"{folder}: {', '.join(linked)} is a symbolic link, and push sends only plain files; copy "
                         f"the folder with its links resolved (`cp -rL {folder} COPY`) and push the copy")
    present = {p.relative_to(folder).as_posix(): p for p in folder.iterdir()}
    for subfolder in (CTRANSLATE2_FOLDER, ONNX_FOLDER, TRANSFORMERS_JS, f"{TRANSFORMERS_JS}/{ONNX_FOLDER}"):
        if (folder / subfolder).is_dir() and not (folder / subfolder).is_symlink():
            present.pop(subfolder)
            present |= {p.relative_to(folder).as_posix(): p for p in (folder / subfolder).iterdir()}
    files = [name for name in UPLOADED_FILES if name in present and present[name].is_file()
             and not present[name].is_symlink()]
    left_out = sorted(name + ("/" if path.is_dir() else "") for name, path in present.items() if name not in files)
    return sorted({*files, "README.md"}), left_out


def push(folder: str | Path, repo_id: str, private: bool = False, dry_run: bool = False, token=None):
    """Create `repo_id` on the Hub and upload the folder's known files in one commit, the card rendered for
    `repo_id`.

    Returns the uploaded file list, the card and the folder's entries left behind; with `dry_run`, only computes them.
    """
    validate_repo_id(repo_id)  # a dry run checks the name too
    folder = Path(folder)
    files, left_out = files_to_upload(folder)
    if set(files) & set(ONNX_FILES):  # what transformers.js users and the page run must be of these weights
        check_export(folder)
    values = json.loads((folder / RESULTS_NAME).read_text())
    try:
        card = render_model_card({**values, "model_name": repo_id.split("/")[-1], "repo_id": repo_id})
    except KeyError as missing:
        raise ValueError(f"{folder / RESULTS_NAME} lacks {missing} for the model card: "
                         "evaluate the model first") from None
    if not dry_run:
        api = HfApi(token=token)
        operations = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode())]
        operations += [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f))
                       for f in files if f != "README.md"]
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            api.create_commit(repo_id, operations, commit_message=f"Upload {repo_id.split('/')[-1]}")
        except HUB_UNREACHABLE as error:
            reason = (str(error).splitlines() or [""])[0] or type(error).__name__
            raise ConnectionError(f"could not upload to {repo_id} at {api.endpoint} ({reason}): the upload is one "
                                  "commit, and none was made; check the network, HF_ENDPOINT, HF_HUB_OFFLINE and "
                                  "`hf auth login`") from None
    return files, card, left_out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    push_parser = commands.add_parser("push", help="upload a Hub-ready folder to a Hub repository")
    push_parser.add_argument("--model", required=True, help="the Hub-ready folder a training run wrote")
    push_parser.add_argument("--repo_id", required=True, help="user/name or organisation/name")
    push_parser.add_argument("--private", action="store_true")
    push_parser.add_argument("--token", default=None, help="default: the token of `hf auth login`")
    push_parser.add_argument("--dry_run", action="store_true", help="list the files and print the card; send nothing")
    args = parser.parse_args(argv)

    try:
        files, card, left_out = push(args.model, args.repo_id, args.private, args.dry_run, args.token)
    except (ImportError, OSError, ValueError) as error:
        parser.exit(2, f"hub push: {error}\n")
    if left_out:
        print(f"Not uploaded (not files this package writes): {', '.join(left_out)}", file=sys.stderr)
    if args.dry_run:
        print(f"Would upload {len(files)} files to {args.repo_id}:")
        print("\n".join(f"  {f}" for f in files))
        print("\nREADME.md:\n" + card)
    else:
        print(f"Uploaded {len(files)} files: https://huggingface.co/{args.repo_id}")


if __name__ == "__main__":
    main()
