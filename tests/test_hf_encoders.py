"""``hf-audio`` and ``hf-vision``: transformers models read from a local folder, never from a hub.

The models are built from transformers configurations (two layers, 32-d, random weights) and saved
with their processors into a temporary folder (tests/support/hf_models.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.hf_models import tiny_models
from support.media import write_clip
from support.mer_process import run_mer

from mercli import doctor, plugins
from mercli.config import load
from mercli.contracts import DecodedClip, Encoder, Features
from mercli.errors import ConfigError
from mer_plugins.encoders.faces import LEFT_EYE_CORNERS, LANDMARK_COUNT, NO_FACE, RIGHT_EYE_CORNERS, FaceTrack
from mer_plugins.encoders.hf_audio import HfAudioEncoder
from mer_plugins.encoders.hf_vision import HfVisionEncoder

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

RATE = 16000


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Tiny model folders by kind: speech models with each way of treating padding, Whisper, image
    models (a CLIP vision tower, a whole CLIP model), and models hf-audio does not run (a log-mel
    speech model other than Whisper, a text model)."""
    return tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """Any attempt to reach a model hub fails at once instead of waiting on the network."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def speech(clip_id: str, seconds: float, seed: int = 0) -> DecodedClip:
    audio = np.random.default_rng(seed).standard_normal(round(seconds * RATE)).astype(np.float32) * 0.1
    return DecodedClip(clip_id, Path(f"{clip_id}.wav"), seconds, audio=audio, sample_rate=RATE)


def video(clip_id: str, frames: int, seed: int = 0) -> DecodedClip:
    pixels = np.random.default_rng(seed).integers(0, 256, (frames, 48, 64, 3), dtype=np.uint8)
    return DecodedClip(clip_id, Path(f"{clip_id}.mp4"), frames / 2, frames=pixels, frame_times=np.arange(frames) / 2)


def assert_same(first: list[Features], second: list[Features], atol: float = 1e-4) -> None:
    for one, other in zip(first, second, strict=True):
        np.testing.assert_allclose(one.values, other.values, atol=atol)
        assert (one.mask is None) == (other.mask is None)
        if one.mask is not None:
            assert np.array_equal(one.mask, other.mask)


# --- hf-audio -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, frames_per_second", [("wav2vec2", 49), ("whisper", 50)])
def test_audio_levels_and_shapes(models, kind, frames_per_second):
    clip = speech("one", 1.0)
    utterance = HfAudioEncoder(model=models[kind]).encode(clip)
    frames = HfAudioEncoder(model=models[kind], level="frame").encode(clip)
    assert utterance.values.shape == (32,) and utterance.values.dtype == np.float32 and utterance.mask is None
    assert frames.values.shape == (frames_per_second, 32) and frames.mask.all() and frames.mask.shape == (frames_per_second,)
    np.testing.assert_allclose(utterance.values, frames.values.mean(axis=0), atol=1e-5)


def test_level_is_a_setting_the_manifest_and_shape_check_read(models):
    from mercli.chain import check_shape

    encoder = HfAudioEncoder(model=models["wav2vec2"], level="frame")
    assert encoder.level == "frame" and HfAudioEncoder.level == "utterance" and encoder.dim == 32
    check_shape(encoder, encoder.encode(speech("one", 1.0)))
    with pytest.raises(ValueError, match="frame-level"):
        check_shape(encoder, HfAudioEncoder(model=models["wav2vec2"]).encode(speech("one", 1.0)))


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert", "whisper"])
def test_a_clip_in_a_batch_gets_what_it_gets_alone(models, kind):
    """Clips of different lengths share forward passes: padded and masked (wav2vec2-large style),
    grouped by length (group-normalised HuBERT-base style), or padded to 30 s (Whisper)."""
    encoder = HfAudioEncoder(model=models[kind], level="frame", batch_size=4)
    clips = [speech("a", 1.0, 1), speech("b", 1.7, 2), speech("c", 0.6, 3), speech("d", 1.0, 4)]
    assert_same(encoder.encode_batch(clips), [encoder.encode(clip) for clip in clips])


def test_padding_would_change_a_group_normalised_model(models):
    """Why HuBERT-base-style models are batched by length: zero padding changes the clip's states."""
    encoder = HfAudioEncoder(model=models["hubert"], level="frame")
    clip = speech("a", 0.6, 3).audio
    alone = encoder.run([clip])[0]
    padded = encoder._wav2vec_states(encoder.loaded(), [clip, np.zeros(RATE, dtype=np.float32)])[0]
    assert np.abs(alone - padded).max() > 1e-3


def test_clips_without_audio_are_absent_in_a_batch(models):
    encoder = HfAudioEncoder(model=models["wav2vec2"])
    silent = DecodedClip("mute", Path("mute.mp4"), 1.0, absent={"audio": "no audio track"})
    first, absent = encoder.encode_batch([speech("a", 1.0), silent])
    assert first.values.shape == (32,)
    assert absent.values is None and absent.absent == "no audio track"


def test_a_long_clip_is_encoded_in_chunks(models):
    """Each chunk is prepared and encoded on its own; the clip's frames are the chunks' frames. A
    2.5 s clip in chunks of at most 1 s is three chunks of 0.83 s, not two of 1 s and one of 0.5 s."""
    encoder = HfAudioEncoder(model=models["wav2vec2"], level="frame", chunk_seconds=1, batch_size=2)
    clip = speech("long", 2.5)
    pieces = [speech(f"p{n}", 0) for n in range(3)]
    for piece, audio in zip(pieces, np.array_split(clip.audio, 3)):
        piece.audio = audio
    expected = np.concatenate([HfAudioEncoder(model=models["wav2vec2"], level="frame").encode(p).values for p in pieces])
    chunked = encoder.encode(clip)
    assert chunked.values.shape == expected.shape == (3 * 41, 32)
    np.testing.assert_allclose(chunked.values, expected, atol=1e-5)


def test_audio_too_short_for_the_model_is_absent(models):
    encoder = HfAudioEncoder(model=models["wav2vec2"])
    assert encoder.shortest == 400
    short, enough = encoder.encode_batch([speech("short", 399 / RATE), speech("enough", 400 / RATE)])
    assert short.values is None and short.absent == "audio too short for the model (399 samples, 400 needed)"
    assert enough.values.shape == (32,)


def test_whisper_chunks_are_at_most_its_30_second_window(models):
    encoder = HfAudioEncoder(model=models["whisper"], level="frame", chunk_seconds=60)
    assert encoder.chunk_samples(RATE) == 30 * RATE
    frames = encoder.encode(speech("long", 35.0))
    assert frames.values.shape == (35 * 50, 32)


def test_layers_pick_one_hidden_state_or_average_several(models):
    def encode(layers):
        return HfAudioEncoder(model=models["wav2vec2"], layers=layers).encode(speech("a", 1.0)).values

    np.testing.assert_allclose(encode([1, 2]), (encode([1]) + encode([2])) / 2, atol=1e-5)
    np.testing.assert_allclose(encode([-1]), encode([2]), atol=0)
    assert not np.allclose(encode([0]), encode([-1]), atol=1e-3)


@pytest.mark.parametrize("layers", [[3], [-4], []])
def test_a_layer_the_model_lacks_is_a_configuration_error(models, layers):
    with pytest.raises(ConfigError, match=r"hf-audio: 'layers' must list hidden states in \[-3, 2\]"):
        HfAudioEncoder(model=models["wav2vec2"], layers=layers)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="half precision runs on CUDA only, and no GPU is here")
def test_half_precision_on_cuda_agrees_with_float32(models):
    audio_half = HfAudioEncoder(model=models["wav2vec2"], device="cuda", half=True)
    audio_full = HfAudioEncoder(model=models["wav2vec2"], device="cuda")
    assert audio_half.loaded().dtype == torch.float16
    clips = [speech("a", 1.0, 1), speech("b", 1.7, 2)]
    assert_same(audio_half.encode_batch(clips), audio_full.encode_batch(clips), atol=2e-2)
    vision_half = HfVisionEncoder(model=models["clip-vision"], input="frame", device="cuda", half=True)
    vision_full = HfVisionEncoder(model=models["clip-vision"], input="frame", device="cuda")
    assert_same(vision_half.encode_batch([video("v", 3)]), vision_full.encode_batch([video("v", 3)]), atol=2e-2)


def test_half_is_ignored_on_a_cpu(models):
    assert HfAudioEncoder(model=models["wav2vec2"], device="cpu", half=True).loaded().dtype == torch.float32


# --- hf-vision ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip-vision", "clip"])
def test_vision_frames_and_utterance(models, kind):
    """A CLIP vision tower folder and a whole CLIP folder (read through its vision tower)."""
    clip = video("v", 3)
    frames = HfVisionEncoder(model=models[kind], input="frame", level="frame").encode(clip)
    utterance = HfVisionEncoder(model=models[kind], input="frame").encode(clip)
    assert frames.values.shape == (3, 32) and frames.mask.tolist() == [True] * 3
    np.testing.assert_allclose(utterance.values, frames.values.mean(axis=0), atol=1e-5)


def test_the_vision_tower_of_a_whole_clip_folder_is_the_clip_model_s(models):
    from transformers import CLIPModel

    whole = CLIPModel.from_pretrained(models["clip"], local_files_only=True).eval()
    encoder = HfVisionEncoder(model=models["clip"], input="frame")
    pixels = encoder.loaded().processor(images=list(video("v", 2).frames), return_tensors="pt").pixel_values
    with torch.inference_mode():
        expected = whole.vision_model(pixel_values=pixels).pooler_output.numpy()
    np.testing.assert_allclose(encoder.run(list(video("v", 2).frames)), expected, atol=1e-5)


def test_vision_batch_agrees_with_single_clips(models):
    encoder = HfVisionEncoder(model=models["clip-vision"], input="frame", level="frame", batch_size=4)
    clips = [video("a", 3, 1), video("b", 2, 2), video("c", 5, 3)]
    assert_same(encoder.encode_batch(clips), [encoder.encode(clip) for clip in clips])


def with_face_track(clip: DecodedClip, encoder: HfVisionEncoder, present: list[bool]) -> DecodedClip:
    """``clip`` with its target-face track already in ``clip.derived``, as the tracker leaves it:
    a face with level eyes in the frames marked present."""
    count = len(present)
    landmarks = np.zeros((count, LANDMARK_COUNT, 2), np.float32)
    for index, here in enumerate(present):
        if here:
            landmarks[index, list(RIGHT_EYE_CORNERS)] = [(24, 18), (28, 18)]
            landmarks[index, list(LEFT_EYE_CORNERS)] = [(36, 18), (40, 18)]
    clip.derived[encoder.tracker.derived_key] = FaceTrack(
        present=np.array(present), landmarks=landmarks, blendshapes=np.zeros((count, 52), np.float32),
        rotations=np.zeros((count, 3, 3), np.float32), boxes=np.zeros((count, 4), np.float32), frame_size=(48, 64))
    return clip


def test_frames_without_the_face_are_masked_not_zero_filled(models):
    frames_encoder = HfVisionEncoder(model=models["clip-vision"], level="frame")
    clip = with_face_track(video("v", 4), frames_encoder, [True, False, True, False])
    frames = frames_encoder.encode(clip)
    assert frames.mask.tolist() == [True, False, True, False]
    assert not frames.values[[1, 3]].any() and frames.values[[0, 2]].any()
    utterance = HfVisionEncoder(model=models["clip-vision"]).encode(clip)
    np.testing.assert_allclose(utterance.values, frames.values[[0, 2]].mean(axis=0), atol=1e-5)
    whole_frames = HfVisionEncoder(model=models["clip-vision"], input="frame", level="frame").encode(clip)
    assert not np.allclose(whole_frames.values[0], frames.values[0], atol=1e-3), "the face crop is not the frame"


def test_a_clip_without_a_face_is_absent(models):
    encoder = HfVisionEncoder(model=models["clip-vision"])
    faceless = with_face_track(video("v", 3), encoder, [False] * 3)
    found = with_face_track(video("w", 3), encoder, [False, True, False])
    absent, present = encoder.encode_batch([faceless, found])
    assert absent.values is None and absent.absent == NO_FACE
    assert present.values.shape == (32,)


def test_face_input_names_the_landmarker_in_its_identity(models):
    faces = HfVisionEncoder(model=models["clip-vision"]).weights_identity()
    frames = HfVisionEncoder(model=models["clip-vision"], input="frame").weights_identity()
    assert faces.startswith(frames) and "face landmarker sha256:" in faces


# --- folders: identity, and what is refused before any clip ------------------------------------------


def test_weights_identity_is_the_hash_of_the_folder(models, tmp_path):
    original = HfAudioEncoder(model=models["wav2vec2"]).weights_identity()
    copy = shutil.copytree(models["wav2vec2"], tmp_path / "copy")
    assert HfAudioEncoder(model=str(copy)).weights_identity() == original, "same files, same identity"
    from transformers import Wav2Vec2Model

    Wav2Vec2Model(Wav2Vec2Model.config_class.from_pretrained(copy)).save_pretrained(copy)  # new random weights
    assert HfAudioEncoder(model=str(copy)).weights_identity() != original
    assert original.startswith("transformers:sha256:")


def test_a_missing_folder_is_named_with_its_key(tmp_path):
    with pytest.raises(ConfigError) as caught:
        HfAudioEncoder(model=str(tmp_path / "chinese-hubert-large"))
    assert str(caught.value) == f"encoder.hf-audio.model: {tmp_path / 'chinese-hubert-large'}: no such folder"


@pytest.mark.parametrize("missing, problem", [
    ("config.json", "no config.json"),
    ("model.safetensors", "no weights"),
    ("preprocessor_config.json", "its speech processor does not load"),
])
def test_an_incomplete_folder_is_refused(models, tmp_path, missing, problem):
    folder = shutil.copytree(models["wav2vec2"], tmp_path / "incomplete")
    (folder / missing).unlink()
    with pytest.raises(ConfigError, match=f"^encoder.hf-audio.model: {folder}: .*{problem}"):
        HfAudioEncoder(model=str(folder))


@pytest.mark.parametrize("encoder, kind, reads", [
    (HfAudioEncoder, "bert", "speech"), (HfAudioEncoder, "clip-vision", "speech"),
    (HfVisionEncoder, "wav2vec2", "images"), (HfVisionEncoder, "bert", "images"),
])
def test_a_folder_of_the_wrong_kind_of_model_is_refused(models, encoder, kind, reads):
    with pytest.raises(ConfigError, match=f"^encoder.{encoder.name}.model: .*{kind}: .* does not read {reads}"):
        encoder(model=models[kind])


def test_log_mel_models_other_than_whisper_are_refused(models):
    """Speech2Text reads log-mel features of any length, not Whisper's 30 s windows."""
    with pytest.raises(ConfigError, match="^encoder.hf-audio.model: .*'speech_to_text' model reads log-mel"):
        HfAudioEncoder(model=models["speech2text"])


def test_missing_weights_are_an_error_not_random_values(models, tmp_path):
    """A folder whose checkpoint lacks some of the model's tensors (transformers would fill them
    with random values and only warn)."""
    from safetensors.torch import load_file, save_file

    folder = shutil.copytree(models["wav2vec2"], tmp_path / "partial")
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(Exception, match="incomplete weights: .* tensors missing"):
        HfAudioEncoder(model=str(folder)).encode(speech("a", 1.0))


def test_an_unset_model_is_an_error_only_when_the_encoder_is_used():
    encoder = HfAudioEncoder()
    (check,) = encoder.checks()
    assert not check.ok and not check.required and "encoder.hf-audio.model is not set" in check.detail
    with pytest.raises(ConfigError, match="^encoder.hf-audio.model: not set"):
        encoder.weights_identity()


# --- the rest of mer: registration, doctor, the batching seam -----------------------------------------


def test_both_are_registered_and_checked_by_doctor(models, fresh_plugins):
    encoders = plugins.registry("encoders")
    assert encoders["hf-audio"].component is HfAudioEncoder and encoders["hf-vision"].component is HfVisionEncoder
    config = load(None, environ={}, overrides={"encoder.hf-audio.model": models["hubert"],
                                               "encoder.hf-vision.input": "frame"})
    checks = {c.name: c for c in doctor.component_checks(config) if "hf-" in c.name}
    assert checks["encoder hf-audio: model"].ok and models["hubert"] in checks["encoder hf-audio: model"].detail
    assert not checks["encoder hf-vision: model"].ok and not checks["encoder hf-vision: model"].required


def test_the_default_encode_batch_encodes_clip_by_clip():
    class Length(Encoder):
        name, modality, level, dim = "length", "audio", "utterance", 1

        def encode(self, clip):
            return Features(np.array([len(clip.audio)], dtype=np.float32))

    assert [f.values[0] for f in Length().encode_batch([speech("a", 1.0), speech("b", 0.5)])] == [RATE, RATE / 2]


@pytest.mark.slow
def test_mer_extract_writes_both_feature_sets(models, tmp_path):
    pytest.importorskip("av")
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "red.mp4", seconds=1.5)
    write_clip(clips / "blue.mp4", seconds=1.0, colour=(20, 40, 220))
    (tmp_path / "mer.toml").write_text(
        '[extract]\nencoders = ["hf-audio", "hf-vision"]\n'
        f'[encoder.hf-audio]\nmodel = "{models["wav2vec2"]}"\nlevel = "frame"\n'
        f'[encoder.hf-vision]\nmodel = "{models["clip-vision"]}"\ninput = "frame"\n'
    )
    result = run_mer("extract", str(clips), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["done"] == 2 and not summary["failed"]
    manifests = {(m := json.loads((Path(s["path"]) / "manifest.json").read_text()))["encoder"]: m
                 for s in summary["feature_sets"]}
    assert manifests["hf-audio"]["level"] == "frame" and manifests["hf-audio"]["dim"] == 32
    assert manifests["hf-vision"]["level"] == "utterance"
    assert manifests["hf-audio"]["weights"] == HfAudioEncoder(model=models["wav2vec2"]).weights_identity()


@pytest.mark.slow
def test_mer_extract_with_a_missing_folder_stops_before_any_clip(tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.wav").write_bytes(b"")
    (tmp_path / "mer.toml").write_text(f'[extract]\nencoders = ["hf-audio"]\n[encoder.hf-audio]\n'
                                       f'model = "{tmp_path / "nowhere"}"\n')
    result = run_mer("extract", str(clips), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"error: encoder.hf-audio.model: {tmp_path / 'nowhere'}: no such folder"
    assert not (tmp_path / "features").exists() or not any((tmp_path / "features").iterdir())


@pytest.mark.slow
def test_face_input_on_a_real_clip_shares_the_face_track(models, shared_data):
    """On a CREMA-D video the face that face-landmarks tracks is the one hf-vision embeds, found once."""
    from mercli.media import decode
    from mer_plugins.encoders.face_crops import aligned_rgb_crop
    from mer_plugins.encoders.face_landmarks import FaceLandmarksEncoder

    path = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    clip = decode(path, path.stem, fps=2.0, audio=False)
    landmarks = FaceLandmarksEncoder().encode(clip)
    encoder = HfVisionEncoder(model=models["clip-vision"], level="frame")
    frames = encoder.encode(clip)
    assert [key for key in clip.derived if key.startswith("face-track")] == [encoder.tracker.derived_key]
    assert frames.mask.tolist() == landmarks.mask.tolist() and frames.mask.any()
    track = clip.derived[encoder.tracker.derived_key]
    first = int(np.flatnonzero(track.present)[0])
    crop = aligned_rgb_crop(clip.frames[first], track.landmarks[first], 224)
    assert crop.shape == (224, 224, 3) and 40 < crop.mean() < 220, "a lit face, not the black outside of the frame"
