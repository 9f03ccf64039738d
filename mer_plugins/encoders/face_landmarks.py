"""``face-landmarks``: MediaPipe FaceLandmarker measurements of the target face, per sampled frame.

Each row (112 values, names in ``FEATURE_NAMES``) describes the clip's target face (chosen and
tracked as :mod:`mer_plugins.encoders.faces` documents) in one frame:

* ``[0:52]`` the 52 blendshape scores in [0, 1], in MediaPipe's order (``_neutral``,
  ``browDownLeft``, ... ``noseSneerRight``; "Left" is the subject's left);
* ``[52:55]`` head rotation in **radians** from the facial transformation matrix, decomposed as
  ``R = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` in MediaPipe's camera frame (x right, y up, z toward the
  viewer): yaw > 0 turns the face toward the image's right, pitch > 0 tips the chin down, roll > 0
  tilts the head counter-clockwise as seen in the image;
* ``[55:58]`` where the face is: its box centre x and y as fractions of the frame's width and
  height, and its size, the square root of the box's share of the frame's area (scale and position
  stand in for the transformation matrix's translation, whose units depend on an assumed camera);
* ``[58:112]`` the geometry of 27 key points (``KEY_POINTS``: eye corners, lids and irises, brows,
  nose tip, lips, forehead, chin and cheeks), x and y in the face's own frame: origin midway between
  the eye centres, x along the line from the subject's right eye to the left one (so in-plane head
  roll is removed), y perpendicular and pointing down the face, unit = the distance between the eye
  centres (so face size and distance to the camera are removed).

Frames in which the target face was not found are masked (``mask`` False, row zeros); a clip
without a face in any frame is returned as absent, with the reason ``"no face in any frame"``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mer_plugins.encoders import models
from mer_plugins.encoders.face_encoder import FaceTrackEncoder
from mercli.plugin_api import Check, DecodedClip, Features, Option, hookimpl

if TYPE_CHECKING:
    import numpy as np

BLENDSHAPE_NAMES = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft",
    "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft",
    "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft",
    "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft",
    "mouthPressRight", "mouthPucker", "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthShrugUpper", "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
)
POSE_NAMES = ("head_yaw", "head_pitch", "head_roll", "face_x", "face_y", "face_size")
#: Key points of MediaPipe's 478-point face mesh ("right" and "left" are the subject's).
KEY_POINTS = {
    "right_eye_outer": 33, "right_eye_inner": 133, "right_eye_upper_lid": 159, "right_eye_lower_lid": 145,
    "right_iris": 468,
    "left_eye_outer": 263, "left_eye_inner": 362, "left_eye_upper_lid": 386, "left_eye_lower_lid": 374,
    "left_iris": 473,
    "right_brow_outer": 70, "right_brow_middle": 105, "right_brow_inner": 107,
    "left_brow_outer": 300, "left_brow_middle": 334, "left_brow_inner": 336,
    "nose_tip": 1,
    "mouth_right_corner": 61, "mouth_left_corner": 291, "upper_lip_top": 0, "lower_lip_bottom": 17,
    "upper_lip_inner": 13, "lower_lip_inner": 14,
    "forehead": 10, "chin": 152, "right_cheek": 234, "left_cheek": 454,
}
FEATURE_NAMES = (
    *BLENDSHAPE_NAMES,
    *POSE_NAMES,
    *(f"{point}_{axis}" for point in KEY_POINTS for axis in "xy"),
)


def head_angles(rotations: "np.ndarray") -> "np.ndarray":
    """(yaw, pitch, roll) in radians of rotation matrices ``(N, 3, 3)``, as the module doc defines."""
    import numpy as np

    yaw = -np.arcsin(np.clip(rotations[:, 2, 0], -1.0, 1.0))
    pitch = np.arctan2(rotations[:, 2, 1], rotations[:, 2, 2])
    roll = np.arctan2(rotations[:, 1, 0], rotations[:, 0, 0])
    return np.stack([yaw, pitch, roll], axis=1)


def face_placement(boxes: "np.ndarray", frame_size: tuple[int, int]) -> "np.ndarray":
    """Box centre (x, y) as fractions of the frame, and the square root of the box's area share."""
    import numpy as np

    height, width = frame_size
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / (width, height)
    share = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1) / (width * height)
    return np.column_stack([centre, np.sqrt(np.clip(share, 0.0, None))])


def key_point_geometry(landmarks: "np.ndarray") -> "np.ndarray":
    """The key points of each face ``(N, 478, 2)`` in its eye-aligned frame, flattened to ``(N, 54)``."""
    import numpy as np

    from mer_plugins.encoders.faces import eye_axes

    indices = list(KEY_POINTS.values())
    rows = []
    for points in landmarks:
        origin, across, eye_distance = eye_axes(points)
        down = np.array([-across[1], across[0]])
        relative = points[indices] - origin
        rows.append(np.column_stack([relative @ across, relative @ down]).reshape(-1) / eye_distance)
    return np.asarray(rows, dtype=np.float32).reshape(len(landmarks), 2 * len(indices))


class FaceLandmarksEncoder(FaceTrackEncoder):
    name = "face-landmarks"
    version = "1"
    description = "MediaPipe FaceLandmarker per frame: 52 blendshapes, head pose and placement, key-point geometry"
    options = (
        Option("model_path", str, None, "FaceLandmarker .task file (default: the one shipped with mer)."),
    )
    dim = len(FEATURE_NAMES)

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.landmarker_path = models.resolve(models.FACE_LANDMARKER, self.settings["model_path"])

    def weights_identity(self) -> str:
        return models.identity(self.landmarker_path, "face landmarker model")

    def checks(self) -> list[Check]:
        return [models.check("face landmarker model", self.landmarker_path, models.FACE_LANDMARKER)]

    def encode(self, clip: DecodedClip) -> Features:
        import numpy as np

        track = self.target_face(clip)
        if isinstance(track, Features):
            return track
        found = track.present
        blendshapes_end = len(BLENDSHAPE_NAMES)
        pose_end = blendshapes_end + len(POSE_NAMES)
        values = np.zeros((len(found), self.dim), dtype=np.float32)
        values[found, :blendshapes_end] = track.blendshapes[found]
        values[found, blendshapes_end : blendshapes_end + 3] = head_angles(track.rotations[found])
        values[found, blendshapes_end + 3 : pose_end] = face_placement(track.boxes[found], track.frame_size)
        values[found, pose_end:] = key_point_geometry(track.landmarks[found])
        return Features(values=values, mask=found.copy())


@hookimpl
def register_encoders(register):
    register(FaceLandmarksEncoder)
