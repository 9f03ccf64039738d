"""BERT's encoder in plain torch, for the bundled MiniLM: the very numbers of transformers'
``BertModel`` (its SDPA attention, in eval mode), without importing transformers' modelling stack,
which costs a ``mer predict`` process about two seconds of start-up on two CPUs.

The modules mirror transformers' layer for layer, with the same parameter names, so that the
``model.safetensors`` of a BERT checkpoint loads as it is (the pooler, which a sentence embedding
does not use, is left out). Attention gets no mask when no token is padding and a boolean one
otherwise, as transformers gives SDPA. The tokenizer is the ``tokenizers`` pipeline saved in the
folder's ``tokenizer.json``. Which models take this path is the text encoder's decision
(:func:`mer_plugins.encoders.text_embedding.load`); tests check that it equals transformers bit for bit.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from mercli.plugin_api import ConfigError


class Embeddings(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        width = config["hidden_size"]
        self.word_embeddings = nn.Embedding(config["vocab_size"], width, padding_idx=config.get("pad_token_id", 0))
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], width)
        self.token_type_embeddings = nn.Embedding(config["type_vocab_size"], width)
        self.LayerNorm = nn.LayerNorm(width, eps=config["layer_norm_eps"])

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        summed = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.LayerNorm(summed + self.position_embeddings(positions))


class Projection(nn.Module):
    """A dense layer, then the residual and LayerNorm (``attention.output`` and ``output``)."""

    def __init__(self, width_in: int, width_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(width_in, width_out)
        self.LayerNorm = nn.LayerNorm(width_out, eps=eps)

    def forward(self, states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(states) + residual)


class SelfAttention(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        width = config["hidden_size"]
        self.head_size = width // config["num_attention_heads"]
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        heads = (*states.shape[:-1], -1, self.head_size)
        query, key, value = (layer(states).view(heads).transpose(1, 2) for layer in (self.query, self.key, self.value))
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0,
                                                  scale=self.head_size ** -0.5, is_causal=False)
        attended = attended.transpose(1, 2).contiguous()
        return attended.reshape(*states.shape[:-1], -1).contiguous()


class Attention(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.self = SelfAttention(config)
        self.output = Projection(config["hidden_size"], config["hidden_size"], config["layer_norm_eps"])

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(states, mask), states)


class Intermediate(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.dense = nn.Linear(config["hidden_size"], config["intermediate_size"])

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(states))


class Layer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.attention = Attention(config)
        self.intermediate = Intermediate(config)
        self.output = Projection(config["intermediate_size"], config["hidden_size"], config["layer_norm_eps"])

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attended = self.attention(states, mask)
        return self.output(self.intermediate(attended), attended)


class Encoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(config) for _ in range(config["num_hidden_layers"]))


class Bert(nn.Module):
    """``BertModel`` without its pooler: token ids in, last hidden states out."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        states = self.embeddings(input_ids, token_type_ids)
        batch, length = input_ids.shape
        mask = None if bool(attention_mask.all()) else attention_mask.bool()[:, None, None, :].expand(
            batch, 1, length, length)
        for layer in self.encoder.layer:
            states = layer(states, mask)
        return states


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
    """The BERT encoder of ``folder`` with its ``model.safetensors`` weights, in eval mode."""
    from safetensors.torch import load_file

    with torch.device("meta"):  # no random initialisation: every parameter is then replaced
        model = Bert(config)
    weights = load_file(folder / "model.safetensors")
    unused = {"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"}
    try:
        model.load_state_dict({k: v for k, v in weights.items() if k not in unused}, strict=True, assign=True)
    except RuntimeError as error:
        raise ConfigError(f"{folder}: not the BERT weights its config.json describes ({error})") from None
    return model.to(device).eval()


def max_length_of(folder: Path) -> int:
    """``model_max_length`` of the folder's ``tokenizer_config.json``, as transformers reads it."""
    path = folder / "tokenizer_config.json"
    declared = json.loads(path.read_text(encoding="utf-8")).get("model_max_length") if path.is_file() else None
    return declared if isinstance(declared, int) else int(1e30)
