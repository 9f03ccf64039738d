"""What the transformers encoders (``hf-audio``, ``hf-vision``) share: a model folder checked when
the encoder is built, the model loaded once per process, and batches across clips.

A folder is read with ``local_files_only=True``: nothing is ever downloaded. It must hold the model's
``config.json``, its weights (safetensors, or a PyTorch ``.bin`` that transformers reads without
unpickling code) and its processor's settings; a folder that lacks one, or holds a model of another
kind (a text model given where speech is read), is one configuration error naming the setting and the
folder, raised when the encoder is built, before any clip is decoded. The weights themselves are
read on the first clip.

Batching never changes a clip's result: items of a batch are padded and the padding is masked (or,
for a model that cannot mask padding, only items of one length share a batch), so a clip encoded
alone and in a batch agree to float precision.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Sequence, TypeVar

from mercli.plugin_api import (AT_LEAST_ONE, LEVELS, Check, ConfigError, DataError, DecodedClip, Encoder, Features,
                               Option, one_line, pick_device)
from mer_plugins.encoders.model_files import transformers_identity

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Any one of these is a model's weights (a sharded checkpoint is named by its index).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

T = TypeVar("T")


@dataclass(frozen=True)
class ModelFolder:
    """A checked model folder: its configuration, and the model class that reads ``inputs``."""

    path: Path
    model_type: str
    model_class: type
    width: int
    layers: int  # transformer layers: output_hidden_states gives layers + 1 states


def open_folder(key: str, setting: str | None, inputs: tuple[str, ...], what: str,
                processor: Callable[[Path], Any]) -> ModelFolder:
    """Check the folder ``setting`` names (the value of option ``key``) for a model that reads
    ``inputs`` (``pixel_values``; ``what`` says it in words) and whose ``processor`` loads; every
    problem is one ConfigError naming ``key`` and the folder."""
    if not setting:
        raise ConfigError(f"{key}: not set (the local folder of a transformers {what} model)")
    path = Path(setting).expanduser()

    def refuse(problem: str) -> ConfigError:
        return ConfigError(f"{key}: {path}: {problem}")

    if not path.is_dir():
        raise refuse("no such folder" if not path.exists() else "a model is a folder, not a file")
    if not (path / "config.json").is_file():
        raise refuse("not a transformers model folder (no config.json)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise refuse(f"incomplete model folder: no weights ({' or '.join(WEIGHT_FILES[::2])})")
    config = _quiet(lambda: _config(path), refuse, "unreadable model configuration")
    model_class, config = _reader(config, inputs)
    if model_class is None:
        raise refuse(f"a '{config.model_type}' model does not read {what} (wrong kind of model for this encoder)")
    with quiet_transformers():  # without torchvision, image processors warn that they fall back to PIL
        _quiet(lambda: processor(path), refuse, f"incomplete model folder: its {what} processor does not load")
    return ModelFolder(path, config.model_type, model_class, int(config.hidden_size), int(config.num_hidden_layers))


def _config(path: Path) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path, local_files_only=True)


def _reader(config: Any, inputs: tuple[str, ...]) -> tuple[type | None, Any]:
    """The class ``AutoModel`` builds for ``config`` if it reads ``inputs``, else that of its vision
    tower (a whole CLIP folder: the image half), with the configuration it is built from."""
    from transformers import MODEL_MAPPING

    for candidate in (config, getattr(config, "vision_config", None)):
        model_class = MODEL_MAPPING.get(type(candidate), None) if candidate is not None else None
        if model_class is not None and model_class.main_input_name in inputs:
            return model_class, candidate
    return None, config


def _quiet(load: Callable[[], T], refuse: Callable[[str], ConfigError], problem: str) -> T:
    """``load()``, whatever it raises turned into one line (library messages run over several)."""
    try:
        return load()
    except Exception as error:
        raise refuse(f"{problem} ({type(error).__name__}: {one_line(error, 200)})") from None


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' warnings and progress bars held back while a folder loads: they would break the
    extract stage's progress display, and what matters in them is raised as an error here."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


@dataclass
class LoadedModel:
    """A model on its device, in the precision it runs at, with its processor."""

    model: "torch.nn.Module"
    processor: Any
    device: "torch.device"
    dtype: "torch.dtype"


@functools.lru_cache(maxsize=None)
def load(folder: ModelFolder, processor: Callable[[Path], Any], device: str, half: bool) -> LoadedModel:
    """One model per folder, device and precision per process, whichever encoder asks."""
    import torch

    where = pick_device(device)
    dtype = torch.float16 if half and where.type == "cuda" else torch.float32
    with quiet_transformers():  # its load report lists the weights of a CLIP folder's text half, unused
        model, report = folder.model_class.from_pretrained(folder.path, local_files_only=True, dtype=dtype,
                                                           output_loading_info=True)
        prepare = processor(folder.path)
    if report["missing_keys"]:  # transformers would run them with random values
        missing = sorted(report["missing_keys"])
        raise DataError(f"{folder.path}: incomplete weights: {len(missing)} tensors missing ({', '.join(missing[:3])}"
                        f"{', ...' if len(missing) > 3 else ''})")
    return LoadedModel(model.to(where).eval(), prepare, where, dtype)


def batches(lengths: Sequence[int], size: int, equal_only: bool = False) -> list[list[int]]:
    """Indices of items grouped into batches of at most ``size``, longest first (little padding);
    with ``equal_only`` a batch holds items of one length (for models that cannot mask padding)."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    grouped: list[list[int]] = []
    for index in order:
        last = grouped[-1] if grouped else None
        if last is not None and len(last) < size and not (equal_only and lengths[last[0]] != lengths[index]):
            last.append(index)
        else:
            grouped.append([index])
    return grouped


def pooled(rows: "np.ndarray", mask: "np.ndarray", level: str) -> Features:
    """A clip's features at ``level`` from its ``(T, dim)`` rows, of which ``mask`` marks the real
    ones: the rows with their mask, or the mean of the real rows."""
    import numpy as np

    rows = rows.astype(np.float32, copy=False)
    if level == "frame":
        return Features(values=rows, mask=mask)
    return Features(values=rows[mask].mean(axis=0))


class TransformersEncoder(Encoder):
    """Base of the encoders that run a transformers model from a local folder. Subclasses name the
    model inputs they read, the processor that prepares them, and ``encode_batch``."""

    inputs: ClassVar[tuple[str, ...]]
    reads: ClassVar[str]  # the inputs in words, for messages: "speech", "images"
    level = "utterance"
    level_option = "level"

    common_options = (
        Option("model", str, None, "Local folder of the transformers model (never downloaded)."),
        Option("level", str, "utterance", "utterance: the mean over the clip's real frames; frame: the sequence "
               "with its mask.", choices=LEVELS),
        Option("batch_size", int, 8, "Model inputs per forward pass, across clips.", AT_LEAST_ONE),
        Option("device", str, "auto", "cpu, cuda, or auto (an accelerator when there is one)."),
        Option("half", bool, False, "Run in float16 on CUDA (faster, about 1e-3 apart); ignored on a CPU."),
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.level = self.settings["level"]
        if self.settings["model"]:
            self.folder  # a folder that is set is checked now, before any clip

    @staticmethod
    def processor(path: Path) -> Any:
        raise NotImplementedError

    @functools.cached_property
    def folder(self) -> ModelFolder:
        return open_folder(f"encoder.{self.name}.model", self.settings["model"], self.inputs, self.reads,
                           self.processor)

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.folder.width

    def weights_identity(self) -> str:
        return transformers_identity(self.folder.path)

    def checks(self) -> list[Check]:
        if not self.settings["model"]:  # an encoder nobody configured is not a broken one
            return [Check("model", False, f"encoder.{self.name}.model is not set", required=False)]
        folder = self.folder
        return [Check("model", True, f"{folder.model_type} model ({folder.width}-d, {folder.layers} layers) "
                                     f"at {folder.path}")]

    def loaded(self) -> LoadedModel:
        return load(self.folder, self.processor, self.settings["device"], self.settings["half"])

    def encode(self, clip: DecodedClip) -> Features:
        return self.encode_batch([clip])[0]
