"""Loading a saved model and its tokenizer, with errors that say what is wrong with the folder."""

import hashlib
from pathlib import Path

import torch
from safetensors import SafetensorError
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from .tokenization import check_tokenizer_matches_model


def load_model(name_or_path: str | Path, **kwargs):
    """`AutoModelForSeq2SeqLM.from_pretrained`, whose damaged or mismatched weights raise an `OSError` that says so
    (safetensors and transformers raise their own exception types there)."""
    try:
        return AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **kwargs)
    except SafetensorError as error:
        raise OSError(f"model.safetensors is damaged or cut short ({error}): "
                      "save or download the model again") from None
    except RuntimeError as error:
        if "mismatch" not in str(error):
            raise
        raise OSError("the weights in model.safetensors do not fit config.json (the report above lists the tensors): "
                      "the two files come from different models") from None


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_folder(name_or_path: str | Path) -> Path:
    """The existing folder `name_or_path` names (a backend that reads an export takes no Hub repository id)."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"No model folder at {name_or_path}")
    return path


def model_location(name_or_path: str) -> Path | str:
    """A local folder's path, or else the Hub repository id; a local path that is no saved model raises."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{name_or_path} is not a saved model: it has no config.json")
    if not path.exists() and looks_local:
        raise FileNotFoundError(f"No model folder at {name_or_path}")
    return path if path.exists() else name_or_path


def load_model_and_tokenizer(name_or_path: str, device: str | None = None, **kwargs):
    """The model (in eval mode, on `device`: cuda when available unless given) and tokenizer of a saved folder or
    Hub repository, checked to belong together (`check_tokenizer_matches_model`): the transformers backend of
    `translate`."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    location = model_location(name_or_path)
    model = load_model(location, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    check_tokenizer_matches_model(tokenizer, model.config)
    return model.to(device).eval(), tokenizer
