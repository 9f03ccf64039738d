"""Folder-per-label: ``ROOT/<label>/<clip>.<ext>``; the first folder under the root is the label.

Clips deeper down (``ROOT/<label>/<session>/<clip>.mp4``) take the label of their first-level
folder; a clip directly in the root has no label folder and is an error, not a silent skip.
"""

from __future__ import annotations

from pathlib import Path

from mercli.plugin_api import Clip, DataError, Dataset, LabelRecord, discover, hookimpl


class FolderPerLabel(Dataset):
    name = "folders"
    version = "1"
    description = "Folder per label: ROOT/<label>/<clip>.<ext>"
    #: Any folder of subfolders looks like this layout, so auto-detection asks it last.
    generic = True

    def detect(self, source: Path) -> bool:
        if not source.is_dir():
            return False
        clips = discover(source)
        return bool(clips) and all(label_folder(clip, source) for clip in clips)

    def read(self, source: Path) -> list[LabelRecord]:
        records = []
        for clip in discover(source):
            label = label_folder(clip, source)
            if label is None:
                raise DataError(f"{clip.path}: not inside a label folder (layout: {source}/<label>/<clip>)")
            records.append(LabelRecord(clip.clip_id, label, path=clip.path))
        return records


def label_folder(clip: Clip, root: Path) -> str | None:
    """The first-level folder holding ``clip`` under ``root``; ``None`` for a clip in the root."""
    parts = clip.path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


@hookimpl
def register_datasets(register):
    register(FolderPerLabel)
