"""The visual encoders (face-landmarks, fer-expression) on real clips from ../shared/data."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mer_plugins.encoders import models
from mer_plugins.encoders.face_landmarks import BLENDSHAPE_NAMES, FEATURE_NAMES, KEY_POINTS, FaceLandmarksEncoder
from mer_plugins.encoders.faces import NO_FACE, Face, FaceTracker, choose_target
from mer_plugins.encoders.fer_expression import CLASSES, FerExpressionEncoder
from mer_plugins.encoders.mini_xception import load_mini_xception
from mercli import plugins
from mercli.contracts import DecodedClip
from mercli.errors import DataError
from mercli.media import decode


@pytest.fixture(scope="module")
def landmarks_encoder() -> FaceLandmarksEncoder:
    return FaceLandmarksEncoder()


@pytest.fixture(scope="module")
def fer_encoder() -> FerExpressionEncoder:
    return FerExpressionEncoder()


def decoded(shared_data: Path, relative: str) -> DecodedClip:
    """A fresh decode (so ``derived`` starts empty) at the extract stage's default 2 fps."""
    path = shared_data / relative
    return decode(path, path.stem, fps=2.0, audio=False)


def synthetic_clip(frames: np.ndarray) -> DecodedClip:
    return DecodedClip(clip_id="synthetic", path=Path("synthetic.mp4"), duration=len(frames) / 2.0,
                       frames=frames, frame_times=np.arange(len(frames)) / 2.0)


# --- contract ---------------------------------------------------------------------------------


def test_registered_through_the_entry_points_with_their_declared_contract(fresh_plugins):
    encoders = plugins.registry("encoders")
    assert encoders["face-landmarks"].component is FaceLandmarksEncoder
    assert encoders["fer-expression"].component is FerExpressionEncoder
    for component, dim in ((FaceLandmarksEncoder, 112), (FerExpressionEncoder, 7)):
        assert (component.modality, component.level, component.dim) == ("visual", "frame", dim)
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == FaceLandmarksEncoder.dim
    assert CLASSES == ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def test_importing_the_plugins_loads_no_model_library():
    """``mer --help`` imports every plug-in module: the heavy libraries must wait until used."""
    code = (
        "import sys, mer_plugins.encoders.face_landmarks, mer_plugins.encoders.fer_expression; "
        "print(sorted(m for m in ('mediapipe', 'torch', 'h5py', 'cv2', 'numpy') if m in sys.modules))"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert answer.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_process_using_both_encoders_prints_nothing_and_exits_cleanly():
    """MediaPipe logs start-up chatter on file descriptor 2 and fails noisily in ``__del__`` at
    interpreter exit; neither may reach a ``mer extract`` user's terminal."""
    code = (
        "import numpy as np; from pathlib import Path; from mercli.contracts import DecodedClip; "
        "from mer_plugins.encoders.face_landmarks import FaceLandmarksEncoder; "
        "from mer_plugins.encoders.fer_expression import FerExpressionEncoder; "
        "clip = DecodedClip('c', Path('c.mp4'), 1.0, frames=np.zeros((2, 96, 96, 3), np.uint8)); "
        "print([e.encode(clip).absent for e in (FaceLandmarksEncoder(), FerExpressionEncoder())])"
    )
    answer = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (answer.returncode, answer.stdout, answer.stderr) == (0, f"{[NO_FACE, NO_FACE]}\n", "")


def test_weights_identity_names_the_model_files(landmarks_encoder, fer_encoder):
    landmarker = f"sha256:{models.EXPECTED_SHA256[models.FACE_LANDMARKER]}"
    classifier = f"sha256:{models.EXPECTED_SHA256[models.FER_MINI_XCEPTION]}"
    assert landmarks_encoder.weights_identity() == landmarker
    assert fer_encoder.weights_identity() == f"{classifier} (face landmarker {landmarker})"


def test_doctor_checks_pass_for_the_shipped_files_and_catch_a_damaged_one(tmp_path, monkeypatch, fer_encoder):
    assert [c.ok for c in fer_encoder.checks()] == [True, True]
    assert "as expected" in fer_encoder.checks()[0].detail
    damaged = tmp_path / models.FER_MINI_XCEPTION
    damaged.write_bytes(models.packaged(models.FER_MINI_XCEPTION).read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(models, "FOLDER", tmp_path)  # a package whose landmarker file is gone
    checks = FerExpressionEncoder().checks()
    assert not checks[0].ok and "damaged or replaced" in checks[0].detail
    assert not checks[1].ok and "missing" in checks[1].detail


def test_missing_or_wrong_model_files_are_one_line_data_errors(tmp_path, shared_data):
    clip = decoded(shared_data, "crema-d/1001_DFA_HAP_XX.flv")
    missing = tmp_path / "nowhere.task"
    with pytest.raises(DataError, match="nowhere.task: face landmarker model cannot be read"):
        FaceLandmarksEncoder(model_path=str(missing)).weights_identity()
    with pytest.raises(DataError, match="nowhere.task: face landmarker model file not found"):
        FaceLandmarksEncoder(model_path=str(missing)).encode(clip)
    text = tmp_path / "model.task"
    text.write_text("not a model\n")
    with pytest.raises(DataError, match="model.task: not a usable FaceLandmarker model"):
        FaceLandmarksEncoder(model_path=str(text)).encode(clip)
    with pytest.raises(DataError, match="model.task: not a readable Keras HDF5 weights file"):
        FerExpressionEncoder(model_path=str(text)).encode(clip)


def test_an_hdf5_file_of_another_architecture_is_refused(tmp_path):
    other = tmp_path / "other.hdf5"
    shutil.copy(models.packaged(models.FER_MINI_XCEPTION), other)
    with h5py.File(other, "r+") as handle:
        handle.attrs["model_config"] = handle.attrs["model_config"].replace("64, 64, 1", "48, 48, 1")
    with pytest.raises(DataError, match="other.hdf5: not the mini-Xception graph .*input shape"):
        load_mini_xception(other)


# --- the features on real clips ----------------------------------------------------------------


def test_face_landmarks_on_a_crema_d_video(shared_data, landmarks_encoder):
    clip = decoded(shared_data, "crema-d/1001_DFA_ANG_XX.flv")
    features = landmarks_encoder.encode(clip)
    assert features.values.shape == (len(clip.frames), 112) and features.values.dtype == np.float32
    assert features.mask.tolist() == [True] * len(clip.frames)
    blendshapes = features.values[:, : len(BLENDSHAPE_NAMES)]
    assert blendshapes.min() >= 0 and blendshapes.max() <= 1 and blendshapes.max() > 0.3
    yaw_pitch_roll = features.values[:, 52:55]
    assert np.abs(yaw_pitch_roll).max() < np.radians(30)  # an actor facing the camera
    placement = features.values[:, 55:58]
    assert ((placement > 0) & (placement < 1)).all()
    points = features.values[:, 58:].reshape(len(clip.frames), len(KEY_POINTS), 2)
    names = list(KEY_POINTS)
    eye = lambda a, b: (points[:, names.index(a)] + points[:, names.index(b)]) / 2  # noqa: E731
    # The key points are in the eye-aligned frame: eye centres at (-0.5, 0) and (0.5, 0) ...
    np.testing.assert_allclose(eye("right_eye_outer", "right_eye_inner"), [[-0.5, 0]] * len(points), atol=1e-5)
    np.testing.assert_allclose(eye("left_eye_outer", "left_eye_inner"), [[0.5, 0]] * len(points), atol=1e-5)
    # ... with the chin below the eyes and the mouth corners on either side.
    assert (points[:, names.index("chin"), 1] > 1.2).all()
    assert (points[:, names.index("mouth_right_corner"), 0] < 0).all()
    assert (points[:, names.index("mouth_left_corner"), 0] > 0).all()


def test_smile_blendshapes_follow_the_happy_clip(shared_data, landmarks_encoder):
    """The blendshape columns are in MediaPipe's order: a smile shows in the smile columns."""
    smile = [BLENDSHAPE_NAMES.index("mouthSmileLeft"), BLENDSHAPE_NAMES.index("mouthSmileRight")]
    scores = {}
    for label in ("HAP", "NEU", "SAD", "ANG"):
        features = landmarks_encoder.encode(decoded(shared_data, f"crema-d/1001_DFA_{label}_XX.flv"))
        scores[label] = features.values[:, smile].mean()
    assert scores["HAP"] > 0.5 and scores["HAP"] > max(scores["NEU"], scores["SAD"], scores["ANG"]) + 0.3


def test_fer_expression_on_a_mead_face_crop(shared_data, fer_encoder):
    clip = decoded(shared_data, "mead/happy.mp4")
    features = fer_encoder.encode(clip)
    assert features.values.shape == (len(clip.frames), 7) and features.mask.all()
    np.testing.assert_allclose(features.values.sum(axis=1), 1.0, atol=1e-5)
    assert features.values.min() >= 0
    per_frame = [CLASSES[i] for i in features.values.argmax(axis=1)]
    assert per_frame.count("happy") >= 0.75 * len(per_frame)
    assert features.values[:, CLASSES.index("happy")].mean() > 0.7


def test_fer_expression_follows_crema_d_labels(shared_data, fer_encoder):
    """Actor 1001: the angry, happy and neutral clips are recognised (chance is 1 in 7)."""
    for label, expected in (("ANG", "angry"), ("HAP", "happy"), ("NEU", "neutral")):
        features = fer_encoder.encode(decoded(shared_data, f"crema-d/1001_DFA_{label}_XX.flv"))
        assert CLASSES[features.values[features.mask].mean(axis=0).argmax()] == expected, label


def test_mini_xception_port_matches_an_independent_reference():
    """Class probabilities of the FER model's TFLite build (``emotion_model_quantized.tflite``, run
    with ai-edge-litert), recorded once, on fixed inputs. The torch port stays within the TFLite
    quantisation noise (at most 0.021 seen); symmetric pooling pads or Keras's batch-norm epsilon
    mistaken for torch's are off by 0.05 to 0.7 on these inputs."""
    i, j = np.mgrid[0:64, 0:64].astype(np.float64)
    inputs = {
        "zeros": np.zeros((64, 64)),
        "waves": np.sin(i / 5.0) * np.cos(j / 7.0),
        "noise": ((np.sin(i * 12.9898 + j * 78.233 + 1.0) * 43758.5453) % 1.0) * 2 - 1,
        "blob": 1 - 2 * np.exp(-((i - 32) ** 2 + (j - 28) ** 2) / 300.0),
    }
    reference = {
        "zeros": [0.135, 0.0, 0.129, 0.042, 0.012, 0.039, 0.643],
        "waves": [0.061, 0.003, 0.006, 0.343, 0.017, 0.006, 0.564],
        "noise": [0.081, 0.0, 0.068, 0.588, 0.255, 0.002, 0.006],
        "blob": [0.337, 0.0, 0.341, 0.085, 0.039, 0.035, 0.163],
    }
    network = load_mini_xception(models.packaged(models.FER_MINI_XCEPTION))
    batch = torch.from_numpy(np.stack(list(inputs.values())).astype(np.float32))[:, None]
    with torch.inference_mode():
        found = network(batch).numpy()
    np.testing.assert_allclose(found, np.array(list(reference.values())), atol=0.03)


# --- masks and absence -------------------------------------------------------------------------


def test_frames_without_a_face_make_the_clip_absent(landmarks_encoder, fer_encoder):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(3, 240, 320, 3), dtype=np.uint8)
    flat = np.full((2, 240, 320, 3), 128, dtype=np.uint8)
    for frames in (noise, flat):
        clip = synthetic_clip(frames)
        for encoder in (landmarks_encoder, fer_encoder):
            features = encoder.encode(clip)
            assert features.values is None and features.absent == NO_FACE == "no face in any frame"


def test_a_clip_without_video_reports_why(landmarks_encoder, fer_encoder):
    clip = DecodedClip(clip_id="voice", path=Path("voice.mp3"), duration=2.0, absent={"visual": "audio-only file"})
    for encoder in (landmarks_encoder, fer_encoder):
        assert encoder.encode(clip).absent == "audio-only file"


def test_frames_without_the_face_are_masked_exactly_there(shared_data, landmarks_encoder, fer_encoder):
    clip = decoded(shared_data, "crema-d/1001_DFA_NEU_XX.flv")
    blanked = [1, 3]
    clip.frames = clip.frames.copy()
    clip.frames[blanked] = 0
    expected = np.ones(len(clip.frames), dtype=bool)
    expected[blanked] = False
    for encoder in (landmarks_encoder, fer_encoder):
        features = encoder.encode(clip)
        assert features.mask.tolist() == expected.tolist()
        assert not features.values[blanked].any() and features.values[expected].any(axis=1).all()


# --- the target face ---------------------------------------------------------------------------


@pytest.mark.slow
def test_the_target_is_the_same_person_across_a_two_person_shot(shared_data):
    """mer2023 sample 338: a woman facing the camera and a man seen from behind, whose ear the
    detector takes for a small face in some frames. The woman is the target in every frame."""
    clip = decoded(shared_data, "mer2023/sample_00000338.mp4")
    tracker = FaceTracker(models.packaged(models.FACE_LANDMARKER), 4)
    assert max(len(tracker.detect(frame)) for frame in clip.frames[:4]) >= 2
    track = tracker.track(clip)
    assert track.present.all()
    centres = (track.boxes[:, :2] + track.boxes[:, 2:]) / 2
    sizes = np.sqrt(np.prod(track.boxes[:, 2:] - track.boxes[:, :2], axis=1))
    assert (centres[:, 0] < clip.frames.shape[2] / 2).all()  # the woman, left of centre
    assert (np.linalg.norm(np.diff(centres, axis=0), axis=1) < 0.5 * sizes[1:]).all()  # moves smoothly


def _face(x: float, y: float, size: float) -> Face:
    half = size / 2
    return Face(np.zeros((478, 2), np.float32), np.zeros(52, np.float32), np.eye(3, dtype=np.float32),
                np.array([x - half, y - half, x + half, y + half], np.float32))


def test_target_rule_prefers_the_large_central_face_and_reacquires_it():
    frame_size = (400, 600)
    small_corner = lambda: _face(60, 60, 40)  # noqa: E731
    large = [_face(300 + 10 * k, 200, 120) for k in range(5)]
    per_frame = [
        [small_corner()],  # only the bystander: not the target for that
        [small_corner(), large[1]],
        [large[2], small_corner()],
        [small_corner()],  # the target is lost ...
        [large[4], small_corner()],  # ... and re-acquired near where it was
    ]
    target = choose_target(per_frame, frame_size)
    assert [face is not None for face in target] == [False, True, True, False, True]
    assert [target[k] is large[k] for k in (1, 2, 4)] == [True, True, True]


def test_a_face_far_from_the_track_starts_a_new_one():
    faces = [[_face(100, 100, 50)], [_face(100, 100, 50)], [_face(400, 100, 50)]]
    target = choose_target(faces, (300, 600))
    assert [face is not None for face in target] == [True, True, False]


def test_both_encoders_share_one_detection_per_clip(shared_data, monkeypatch, landmarks_encoder, fer_encoder):
    calls = []
    original = FaceTracker._landmarks

    def counting(self, image, top, left):
        calls.append(image.shape)
        return original(self, image, top, left)

    monkeypatch.setattr(FaceTracker, "_landmarks", counting)
    landmarks_encoder.encode(decoded(shared_data, "crema-d/1001_DFA_SAD_XX.flv"))
    alone = len(calls)
    assert alone > 0
    calls.clear()
    clip = decoded(shared_data, "crema-d/1001_DFA_SAD_XX.flv")
    fer_encoder.encode(clip)
    landmarks_encoder.encode(clip)
    assert len(calls) == alone


@pytest.mark.slow
def test_a_failing_run_that_holds_both_encoders_still_exits(tmp_path, shared_data):
    """A test failure keeps the encoders in a traceback; the cycle collector then frees each
    landmarker together with MediaPipe's worker-thread executor, and MediaPipe's own ``__del__``
    used to wait forever for that thread (the whole pytest run hung at exit)."""
    clip = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    (tmp_path / "test_failing.py").write_text(
        "from pathlib import Path\n"
        "import pytest\n"
        "from mercli.media import decode\n"
        "from mer_plugins.encoders.face_landmarks import FaceLandmarksEncoder\n"
        "from mer_plugins.encoders.fer_expression import FerExpressionEncoder\n"
        f"CLIP = Path({str(clip)!r})\n"
        "@pytest.fixture(scope='module')\n"
        "def landmarks():\n"
        "    return FaceLandmarksEncoder()\n"
        "@pytest.fixture(scope='module')\n"
        "def fer():\n"
        "    return FerExpressionEncoder()\n"
        "def test_landmarks(landmarks):\n"
        "    landmarks.encode(decode(CLIP, 'clip', audio=False))\n"
        "def test_fer_then_fails(fer):\n"
        "    assert fer.encode(decode(CLIP, 'clip', audio=False)).values is None\n"
        "def test_fails():\n"
        "    assert False\n"
    )
    try:
        answer = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_failing.py"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a pytest run with failing visual-encoder tests did not exit")
    assert answer.returncode == 1 and "2 failed" in answer.stdout
