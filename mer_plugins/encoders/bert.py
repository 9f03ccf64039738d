"""BERT's encoder in plain torch, for the bundled MiniLM: the very numbers of transformers'
``BertModel`` (its SDPA attention, in eval mode), without importing transformers' modelling stack,
which costs a ``mer predict`` process about two seconds of start-up on two CPUs.

The forward pass calls the functions that transformers' layers call (``F.linear`` where it has an
``nn.Linear``, and so on), in the same order, on the tensors of the folder's ``model.safetensors``
under transformers' own names; no module is built, so no random initialisation is paid for and
thrown away (building on the meta device instead would import torch's compiler, 2 s). Attention
gets no mask when no token is padding and a boolean one otherwise, as transformers gives SDPA. The
tokenizer is the ``tokenizers`` pipeline saved in the folder's ``tokenizer.json``. Which models take
this path is the text encoder's decision (:func:`mer_plugins.encoders.text_embedding.SentenceModel`);
tests check that it equals transformers bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from mercli.plugin_api import ConfigError

EMBEDDINGS = ("embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
              "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias")
#: Per layer, after ``encoder.layer.<i>.``: the dense layers and LayerNorms, each a weight and a bias.
LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


class Bert:
    """``BertModel`` without its pooler: token ids in, last hidden states out."""

    def __init__(self, weights: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
        self.weights = weights
        self.layers = config["num_hidden_layers"]
        self.head_size = config["hidden_size"] // config["num_attention_heads"]
        self.eps = config["layer_norm_eps"]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor) -> torch.Tensor:
        w = self.weights
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        states = (F.embedding(input_ids, w["embeddings.word_embeddings.weight"])
                  + F.embedding(token_type_ids, w["embeddings.token_type_embeddings.weight"]))
        states = self._norm(states + F.embedding(positions, w["embeddings.position_embeddings.weight"]),
                            "embeddings.LayerNorm")
        batch, length = input_ids.shape
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :].expand(
            batch, 1, length, length)
        for index in range(self.layers):
            layer = f"encoder.layer.{index}."
            attended = self._norm(self._dense(self._attend(states, mask, layer), layer + "attention.output.dense")
                                  + states, layer + "attention.output.LayerNorm")
            inner = F.gelu(self._dense(attended, layer + "intermediate.dense"))
            states = self._norm(self._dense(inner, layer + "output.dense") + attended, layer + "output.LayerNorm")
        return states

    def _attend(self, states: torch.Tensor, mask: torch.Tensor | None, layer: str) -> torch.Tensor:
        heads = (*states.shape[:-1], -1, self.head_size)
        query, key, value = (self._dense(states, layer + f"attention.self.{name}").view(heads).transpose(1, 2)
                             for name in ("query", "key", "value"))
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                  scale=self.head_size ** -0.5, is_causal=False)
        return attended.transpose(1, 2).contiguous().reshape(*states.shape[:-1], -1).contiguous()

    def _dense(self, states: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(states, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"])

    def _norm(self, states: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(states, (states.shape[-1],), self.weights[f"{name}.weight"],
                            self.weights[f"{name}.bias"], self.eps)


class Tokenizer:
    """The folder's ``tokenizer.json``, truncating to ``max_length`` tokens and padding a batch
    to its longest text, as transformers' fast tokenizers do; ``limit`` is the folder's own
    ``model_max_length``."""

    def __init__(self, folder: Path) -> None:
        from tokenizers import Tokenizer as Pipeline

        self.pipeline = Pipeline.from_file(str(folder / "tokenizer.json"))
        self.pipeline.enable_padding(pad_id=self.pipeline.token_to_id("[PAD]"), pad_token="[PAD]")
        self.limit = max_length_of(folder)

    def __call__(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        self.pipeline.enable_truncation(max_length)
        encoded = self.pipeline.encode_batch(texts)
        return {"input_ids": torch.tensor([e.ids for e in encoded]),
                "attention_mask": torch.tensor([e.attention_mask for e in encoded]),
                "token_type_ids": torch.tensor([e.type_ids for e in encoded])}


def load(folder: Path, config: dict[str, Any], device: str) -> Bert:
    """The BERT encoder of ``folder`` with its ``model.safetensors`` weights."""
    from safetensors.torch import load_file

    weights = load_file(folder / "model.safetensors", device=device)
    wanted = [*EMBEDDINGS, *(f"encoder.layer.{index}.{part}.{kind}" for index in range(config["num_hidden_layers"])
                            for part in LAYER_PARTS for kind in ("weight", "bias"))]
    missing = [name for name in wanted if name not in weights]
    if missing:
        raise ConfigError(f"{folder}: not the BERT weights its config.json describes (no {missing[0]})")
    return Bert({name: weights[name] for name in wanted}, config)


def max_length_of(folder: Path) -> int:
    """``model_max_length`` of the folder's ``tokenizer_config.json``, as transformers reads it."""
    path = folder / "tokenizer_config.json"
    declared = json.loads(path.read_text(encoding="utf-8")).get("model_max_length") if path.is_file() else None
    return declared if isinstance(declared, int) else int(1e30)
