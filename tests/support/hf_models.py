"""Tiny transformers model folders (two layers, 32-d, random weights) saved with their processors,
the layout a downloaded folder has: the ``hf-audio`` and ``hf-vision`` encoders cannot tell them
from real ones, and the tests need no network and no large file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CONV = dict(conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def _save(folder: Path, model: Any, processor: Any) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def _vocab(root: Path) -> str:
    path = root / "vocab.txt"
    path.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]) + "\n")
    return str(path)


def _images() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


VISION = dict(SMALL, image_size=32, patch_size=8)


def _wav2vec2(folder: Path) -> str:
    """Layer-normalised convolutions (the large models): batches are padded and masked."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    return _save(folder, Wav2Vec2Model(Wav2Vec2Config(**SMALL, **CONV, feat_extract_norm="layer",
                                                      do_stable_layer_norm=True)),
                 Wav2Vec2FeatureExtractor(return_attention_mask=True))


def _hubert(folder: Path) -> str:
    """Group-normalised convolutions (the base models): padding would change the result."""
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    return _save(folder, HubertModel(HubertConfig(**SMALL, **CONV, feat_extract_norm="group")),
                 Wav2Vec2FeatureExtractor(return_attention_mask=False))


def _whisper(folder: Path) -> str:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    return _save(folder, WhisperModel(WhisperConfig(
        d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1)), WhisperFeatureExtractor())


def _clip_vision(folder: Path) -> str:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return _save(folder, CLIPVisionModel(CLIPVisionConfig(**VISION)), _images())


def _clip(folder: Path) -> str:
    from transformers import CLIPConfig, CLIPModel

    return _save(folder, CLIPModel(CLIPConfig(
        text_config=dict(SMALL, vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=VISION, projection_dim=8)), _images())


def _speech2text(folder: Path) -> str:
    """A log-mel speech model other than Whisper (hf-audio refuses it)."""
    from transformers import Speech2TextConfig, Speech2TextFeatureExtractor, Speech2TextModel

    return _save(folder, Speech2TextModel(Speech2TextConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, conv_channels=32)), Speech2TextFeatureExtractor())


def _bert(folder: Path) -> str:
    """A text model (neither encoder runs it)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    return _save(folder, BertModel(BertConfig(**SMALL, vocab_size=64)),
                 BertTokenizerFast(vocab_file=_vocab(folder.parent)))


TINY_MODELS: dict[str, Callable[[Path], str]] = {
    "wav2vec2": _wav2vec2, "hubert": _hubert, "whisper": _whisper, "clip-vision": _clip_vision, "clip": _clip,
    "speech2text": _speech2text, "bert": _bert,
}


def tiny_models(root: Path, kinds: list[str] | None = None) -> dict[str, str]:
    """Folders under ``root`` of the tiny models of ``kinds`` (default: all), by kind, each built
    from the same seed."""
    import torch

    torch.manual_seed(0)
    return {kind: TINY_MODELS[kind](root / kind) for kind in kinds or TINY_MODELS}
