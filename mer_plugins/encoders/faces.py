"""The target face of a clip, found once and shared by every visual encoder that needs it.

MediaPipe's FaceLandmarker runs on each sampled frame (IMAGE mode: frames sampled at 2 fps are too
far apart for its video tracking to help, and a stateless detector gives the same answer whatever
ran before). Its face detector is the short-range one and misses small faces (people in a wide TV
shot), so a frame where the whole image yields no face is searched again as four overlapping
tiles, each three quarters of the frame in width and height; a face found in several tiles is kept
once.

**Which face is the target.** Detections are linked from frame to frame into tracks: a detection
joins the track whose last box centre is nearest, if that distance is under one face size
(the square root of the larger box's area); pairs are taken greedily, nearest first. A track that
lost its face keeps its last box, so the same person is re-acquired when the face comes back near
where it was. The target is the track with the greatest summed salience, where a detection's
salience is its box area as a fraction of the frame, times a centre weight that falls linearly
from 1 at the frame centre to 0.5 at a corner: the face that is large, central and present longest.
Frames in which the target track has no detection are marked absent.

The track is stored in ``clip.derived`` under a key naming the model file and settings, so that
when several encoders (``face-landmarks``, ``fer-expression``) run on one clip the detection runs
once.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mercli.plugin_api import DataError, DecodedClip

NO_FACE = "no face in any frame"
NO_FRAMES = "no video frames"
LANDMARK_COUNT = 478
BLENDSHAPE_COUNT = 52
#: Eye corners in MediaPipe's face mesh numbering (the subject's right eye is on the image's left).
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (362, 263)
#: Overlapping tiles searched when the whole frame yields no face: (top, left) as fractions of the
#: free margin, each tile TILE_FRACTION of the frame's height and width.
TILE_FRACTION = 0.75
TILE_ORIGINS = ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0))
MIN_TILE_SIDE = 32  # pixels; a frame too small to tile is too small to hide a face
DUPLICATE_IOU = 0.3
MATCH_DISTANCE = 1.0  # in face sizes
CORNER_WEIGHT = 0.5


@dataclass(frozen=True)
class Face:
    """One detected face in one frame; coordinates are pixels of the full frame."""

    landmarks: np.ndarray  # (478, 2) x, y
    blendshapes: np.ndarray  # (52,) in MediaPipe's category order
    rotation: np.ndarray  # (3, 3) head rotation from the facial transformation matrix
    box: np.ndarray  # (4,) x0, y0, x1, y1 of the landmarks

    @property
    def centre(self) -> np.ndarray:
        return (self.box[:2] + self.box[2:]) / 2

    @property
    def size(self) -> float:
        width, height = self.box[2:] - self.box[:2]
        return float(np.sqrt(max(width * height, 1e-9)))


@dataclass(frozen=True)
class FaceTrack:
    """The target face across a clip's sampled frames; rows where ``present`` is False are zeros."""

    present: np.ndarray  # (T,) bool
    landmarks: np.ndarray  # (T, 478, 2) float32 pixels
    blendshapes: np.ndarray  # (T, 52) float32
    rotations: np.ndarray  # (T, 3, 3) float32
    boxes: np.ndarray  # (T, 4) float32 pixels
    frame_size: tuple[int, int]  # (height, width)

    @classmethod
    def from_faces(cls, faces: list[Face | None], frame_size: tuple[int, int]) -> "FaceTrack":
        count = len(faces)
        track = cls(
            present=np.array([face is not None for face in faces], dtype=bool),
            landmarks=np.zeros((count, LANDMARK_COUNT, 2), np.float32),
            blendshapes=np.zeros((count, BLENDSHAPE_COUNT), np.float32),
            rotations=np.zeros((count, 3, 3), np.float32),
            boxes=np.zeros((count, 4), np.float32),
            frame_size=frame_size,
        )
        for index, face in enumerate(faces):
            if face is not None:
                track.landmarks[index] = face.landmarks
                track.blendshapes[index] = face.blendshapes
                track.rotations[index] = face.rotation
                track.boxes[index] = face.box
        return track


def eye_axes(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The face's own 2-D frame: origin midway between the eye centres, unit x axis from the
    subject's right eye to the left eye (eyes level), and the inter-ocular distance in pixels."""
    right = landmarks[list(RIGHT_EYE_CORNERS)].mean(axis=0)
    left = landmarks[list(LEFT_EYE_CORNERS)].mean(axis=0)
    across = left - right
    distance = float(np.hypot(*across))
    axis = across / distance if distance > 0 else np.array([1.0, 0.0])
    return (left + right) / 2, axis, max(distance, 1e-6)


def salience(face: Face, frame_size: tuple[int, int]) -> float:
    """Box area as a fraction of the frame, weighted down linearly toward the corners."""
    height, width = frame_size
    offset = np.hypot(*(face.centre - (width / 2, height / 2))) / np.hypot(width / 2, height / 2)
    area = np.prod(face.box[2:] - face.box[:2]) / (width * height)
    return float(area * (1 - (1 - CORNER_WEIGHT) * min(offset, 1.0)))


def choose_target(per_frame: list[list[Face]], frame_size: tuple[int, int]) -> list[Face | None]:
    """Link detections into tracks and keep the most salient track (the rule in the module doc)."""
    tracks: list[dict[int, Face]] = []
    last_seen: list[Face] = []
    for index, faces in enumerate(per_frame):
        pairs = sorted(
            (np.hypot(*(face.centre - last.centre)) / max(face.size, last.size), t, f)
            for t, last in enumerate(last_seen)
            for f, face in enumerate(faces)
        )
        taken_tracks: set[int] = set()
        taken_faces: set[int] = set()
        for distance, t, f in pairs:
            if distance >= MATCH_DISTANCE or t in taken_tracks or f in taken_faces:
                continue
            tracks[t][index] = last_seen[t] = faces[f]
            taken_tracks.add(t)
            taken_faces.add(f)
        for f, face in enumerate(faces):
            if f not in taken_faces:
                tracks.append({index: face})
                last_seen.append(face)
    if not tracks:
        return [None] * len(per_frame)
    target = max(tracks, key=lambda track: sum(salience(face, frame_size) for face in track.values()))
    return [target.get(index) for index in range(len(per_frame))]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    overlap = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - overlap
    return float(overlap / union) if union > 0 else 0.0


class FaceTracker:
    """Finds the target face track of a clip with one FaceLandmarker, loaded on first use."""

    def __init__(self, model_path: Path, num_faces: int) -> None:
        if num_faces < 1:
            raise ValueError(f"num_faces must be at least 1, not {num_faces}")
        self.model_path = Path(model_path)
        self.num_faces = num_faces
        self._landmarker: Any = None

    @property
    def derived_key(self) -> str:
        """Where the track lives in ``clip.derived``: trackers with the same model and settings share it."""
        return f"face-track:{self.model_path.resolve()}:{self.num_faces}"

    def track(self, clip: DecodedClip) -> FaceTrack | None:
        """The clip's target face track (computed once per clip), or None for a clip with no frames."""
        if clip.frames is None or len(clip.frames) == 0:
            return None
        if self.derived_key not in clip.derived:
            frame_size = (int(clip.frames.shape[1]), int(clip.frames.shape[2]))
            per_frame = [self.detect(frame) for frame in clip.frames]
            clip.derived[self.derived_key] = FaceTrack.from_faces(choose_target(per_frame, frame_size), frame_size)
        return clip.derived[self.derived_key]

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Every face in one RGB frame: the whole frame first, overlapping tiles if that finds none."""
        faces = self._landmarks(frame, 0, 0)
        if faces:
            return faces
        height, width = frame.shape[:2]
        tile_h, tile_w = int(height * TILE_FRACTION), int(width * TILE_FRACTION)
        if min(tile_h, tile_w) < MIN_TILE_SIDE:
            return []
        found: list[tuple[float, Face]] = []
        for down, across in TILE_ORIGINS:
            top, left = round(down * (height - tile_h)), round(across * (width - tile_w))
            tile_centre = np.array([left + tile_w / 2, top + tile_h / 2])
            for face in self._landmarks(frame[top : top + tile_h, left : left + tile_w], top, left):
                # a face seen whole near a tile's centre is landmarked better than one at its edge
                found.append((float(np.hypot(*(face.centre - tile_centre))), face))
        kept: list[Face] = []
        for _, face in sorted(found, key=lambda pair: pair[0]):
            if all(_iou(face.box, other.box) < DUPLICATE_IOU for other in kept):
                kept.append(face)
        return kept

    def _landmarks(self, image: np.ndarray, top: int, left: int) -> list[Face]:
        """One FaceLandmarker call on ``image``, a region of the frame at ``(top, left)``."""
        import mediapipe as mp

        result = self._load().detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image)))
        height, width = image.shape[:2]
        faces = []
        for points, categories, matrix in zip(
            result.face_landmarks, result.face_blendshapes, result.facial_transformation_matrixes
        ):
            xy = np.array([(p.x * width + left, p.y * height + top) for p in points], dtype=np.float32)
            blendshapes = np.zeros(BLENDSHAPE_COUNT, np.float32)
            for category in categories:
                blendshapes[category.index] = category.score
            box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
            faces.append(Face(xy, blendshapes, np.asarray(matrix, np.float32)[:3, :3], box))
        return faces

    def _load(self) -> Any:
        if self._landmarker is None:
            if not self.model_path.is_file():
                raise DataError(f"{self.model_path}: face landmarker model file not found")
            from mediapipe.tasks.python import BaseOptions, vision

            options = vision.FaceLandmarkerOptions(
                base_options=BaseOptions(model_asset_path=str(self.model_path)),
                running_mode=vision.RunningMode.IMAGE,
                num_faces=self.num_faces,
                output_face_blendshapes=True,
                output_facial_transformation_matrixes=True,
            )
            try:
                with _native_stderr_silenced():
                    self._landmarker = vision.FaceLandmarker.create_from_options(options)
            except (RuntimeError, ValueError) as error:
                raise DataError(f"{self.model_path}: not a usable FaceLandmarker model ({error})") from error
            # Close it while this tracker is being freed, not later in MediaPipe's own __del__:
            # freed by the cycle collector together with its worker thread's executor, a
            # landmarker's __del__ waits forever for that thread (seen when a pytest failure kept
            # an encoder in a traceback). The finalizer holds the landmarker, so the executor is
            # still alive when it runs.
            weakref.finalize(self, self._landmarker.close).atexit = False
            _close_at_exit(self._landmarker)
        return self._landmarker


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Mute file descriptor 2 while MediaPipe's C++ side starts up: it logs a dozen lines of
    start-up chatter there (glog, TFLite) that no setting turns off. Errors still arrive as
    Python exceptions."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no standard error to mute
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_open_landmarkers: "weakref.WeakSet[Any]" = weakref.WeakSet()
_exit_hook_registered = False


def _close_at_exit(landmarker: Any) -> None:
    """Close ``landmarker`` cleanly when the interpreter exits.

    MediaPipe closes a landmarker through a worker thread that the interpreter stops before
    ``atexit`` handlers run, so its own ``__del__`` fails noisily at exit. Flagging MediaPipe's
    shutdown first (what its own exit hook does a moment later: this hook, registered after
    MediaPipe was imported, runs before it) turns ``close`` into a quiet release of the handle.
    """
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_close_open_landmarkers)
        _exit_hook_registered = True
    _open_landmarkers.add(landmarker)


def _close_open_landmarkers() -> None:
    from mediapipe.tasks.python.core import mediapipe_c_utils

    getattr(mediapipe_c_utils, "_python_exit", lambda: None)()
    for landmarker in list(_open_landmarkers):
        with contextlib.suppress(Exception):
            landmarker.close()
