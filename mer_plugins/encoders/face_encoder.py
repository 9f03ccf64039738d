"""What the encoders of the target face share: one landmarker per encoder instance, and the clip's
face track, which :class:`~mer_plugins.encoders.faces.FaceTracker` computes once per clip."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mercli.plugin_api import DecodedClip, Encoder, Features

if TYPE_CHECKING:
    from mer_plugins.encoders.faces import FaceTrack, FaceTracker

#: How many faces the landmarker reports per frame, among which the target is chosen.
MAX_FACES = 4


class FaceTrackEncoder(Encoder):
    """Base of frame-level visual encoders that read the target face; subclasses set
    ``landmarker_path`` in ``__init__``."""

    modality = "visual"
    level = "frame"
    landmarker_path: Path
    _tracker: "FaceTracker | None" = None

    @property
    def tracker(self) -> "FaceTracker":
        if self._tracker is None:
            from mer_plugins.encoders.faces import FaceTracker

            self._tracker = FaceTracker(self.landmarker_path, MAX_FACES)
        return self._tracker

    def target_face(self, clip: DecodedClip) -> "FaceTrack | Features":
        """The clip's target-face track, or the absent result when there is no face to read."""
        from mer_plugins.encoders.faces import NO_FACE, NO_FRAMES

        track = self.tracker.track(clip)
        if track is None:
            return Features(values=None, absent=clip.absent.get("visual", NO_FRAMES))
        if not track.present.any():
            return Features(values=None, absent=NO_FACE)
        return track
