"""The plug-in manager: loads the built-in plug-ins and every plug-in of the entry-point group
``mer``, and collects what they register, stage by stage.

Built-in plug-ins (``mer_plugins``) are listed in :data:`BUILTINS` by module name and registered
exactly as third-party ones are, hook by hook, so both travel the same path; adding a built-in
needs no reinstall. A plug-in that fails to import, fails while registering, or registers a name
another plug-in already took is reported as a :class:`~mercli.errors.PluginError` that names it.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Callable, Generic, Iterator, TypeVar

import pluggy

import mercli.hookspecs as hookspecs
from mercli.contracts import STAGES, Component, Encoder, Option
from mercli.errors import PluginError
from mercli.vocabulary import LEVELS, MODALITIES

if TYPE_CHECKING:  # the configuration looks plug-ins up; plug-ins only read it
    from mercli.config import Config

ENTRY_POINT_GROUP = "mer"

#: The built-in plug-ins: plug-in name -> module. The core names them; it never imports them itself.
BUILTINS: dict[str, str] = {
    "dataset-mer2024": "mer_plugins.datasets.mer2024",
    "dataset-folders": "mer_plugins.datasets.folders",
    "dataset-crema-d": "mer_plugins.datasets.crema_d",
    "dataset-ravdess": "mer_plugins.datasets.ravdess",
    "dataset-emodb": "mer_plugins.datasets.emodb",
    "encoder-face-landmarks": "mer_plugins.encoders.face_landmarks",
    "encoder-fer-expression": "mer_plugins.encoders.fer_expression",
    "encoder-whisper": "mer_plugins.encoders.whisper",
    "encoder-egemaps": "mer_plugins.encoders.egemaps",
    "encoder-text-embedding": "mer_plugins.encoders.text_embedding",
    "encoder-hf-audio": "mer_plugins.encoders.hf_audio",
    "encoder-hf-vision": "mer_plugins.encoders.hf_vision",
    "reasoner-local": "mer_plugins.reasoners.local",
    "reasoner-gemini": "mer_plugins.reasoners.gemini",
    "reasoner-openai": "mer_plugins.reasoners.openai_compatible",
    "loss-cross-entropy": "mer_plugins.losses.cross_entropy",
    "loss-contrastive": "mer_plugins.losses.contrastive",
}

C = TypeVar("C", bound=Component)


@dataclass(frozen=True)
class Provenance:
    """Where a plug-in comes from: its entry-point name and the distribution that ships it."""

    plugin: str
    package: str
    package_version: str


@dataclass(frozen=True)
class Registered(Generic[C]):
    """A component class together with the plug-in that registered it."""

    component: type[C]
    provenance: Provenance

    @property
    def name(self) -> str:
        return self.component.name


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    provenance: dict[str, Provenance]

    def provenance_of(self, plugin: object) -> Provenance:
        name = self.manager.get_name(plugin) or repr(plugin)
        return self.provenance.get(name, Provenance(name, name, "unknown"))


def own_version() -> str:
    """The installed version of mer itself (what the core's own feature sets record)."""
    try:
        return metadata.version("mer")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def _plugins_to_load() -> Iterator[tuple[Provenance, Callable[[], object]]]:
    """Each plug-in's provenance and how to import it: the built-ins, then the entry points.

    ``metadata.entry_points`` sees each distribution once even when it is on ``sys.path`` twice (an
    editable install run from its own checkout also finds ``mer.egg-info``), so a clash of names
    is a real one: two distributions that chose the same plug-in name.
    """
    version = own_version()
    for name, module in BUILTINS.items():
        yield Provenance(name, "mer", version), functools.partial(importlib.import_module, module)
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = entry_point.dist
        package = dist.metadata["Name"] if dist is not None else "unknown distribution"
        yield Provenance(entry_point.name, package, dist.version if dist else "unknown"), entry_point.load


@functools.lru_cache(maxsize=None)
def loaded() -> LoadedPlugins:
    """Load the built-in plug-ins and every entry point of the group ``mer``, once per process."""
    manager = pluggy.PluginManager("mer")
    manager.add_hookspecs(hookspecs)
    provenance: dict[str, Provenance] = {}
    for origin, load in _plugins_to_load():
        where = f"plug-in '{origin.plugin}' ({origin.package})"
        if origin.plugin in provenance:
            other = provenance[origin.plugin].package
            raise PluginError(f"{where}: the plug-in name '{origin.plugin}' is already taken by {other}")
        try:
            manager.register(load(), name=origin.plugin)
        except Exception as error:  # a broken plug-in must not hide behind a traceback
            raise PluginError(f"{where} failed to load: {type(error).__name__}: {error}") from error
        provenance[origin.plugin] = origin
    plugins = LoadedPlugins(manager, provenance)
    try:
        manager.check_pending()  # a misspelt hook would otherwise be ignored without a word
    except pluggy.PluginValidationError as error:
        where = plugins.provenance_of(error.plugin)
        raise PluginError(f"plug-in '{where.plugin}' ({where.package}): {error}") from error
    return plugins


def contract_problem(component: type[Component]) -> str | None:
    """What a component class lacks of the declarations the core reads before building it
    (``mer plugins`` shows them, configuration validates against ``options``), or ``None``."""
    name = getattr(component, "name", None)
    if not isinstance(name, str) or not name:
        return "has no name"
    if not all(isinstance(option, Option) for option in component.options):
        return "declares options that are not contracts.Option"
    if issubclass(component, Encoder):
        if getattr(component, "modality", None) not in MODALITIES:
            return f"must declare modality as one of {', '.join(MODALITIES)}"
        if getattr(component, "level", None) not in LEVELS:
            return f"must declare level as one of {', '.join(LEVELS)}"
        if component.level_option is not None and component.level_option not in {o.name for o in component.options}:
            return f"names level_option '{component.level_option}', which is not one of its options"
    return None


@functools.lru_cache(maxsize=None)
def registry(stage: str) -> dict[str, Registered]:
    """Every component registered for ``stage`` (``encoders``, ``reasoners``, ``losses``,
    ``datasets``), by name, in registration order."""
    hook_name, base = STAGES[stage].hook, STAGES[stage].base
    plugins = loaded()
    found: dict[str, Registered] = {}
    for implementation in getattr(plugins.manager.hook, hook_name).get_hookimpls():
        provenance = plugins.provenance_of(implementation.plugin)
        where = f"plug-in '{provenance.plugin}' ({provenance.package})"

        def register(component: type[Component], where: str = where, provenance=provenance) -> None:
            if not (isinstance(component, type) and issubclass(component, base)):
                raise PluginError(f"{where} registered {component!r}, which is not a {base.__name__} subclass")
            problem = contract_problem(component)
            if problem:
                raise PluginError(f"{where} registered {component.__name__}, which {problem}")
            name = component.name
            if name in found:
                other = found[name].provenance
                raise PluginError(
                    f"{where} registers {STAGES[stage].table} '{name}', already registered by "
                    f"plug-in '{other.plugin}' ({other.package})"
                )
            found[name] = Registered(component, provenance)

        try:
            implementation.function(**{arg: register for arg in implementation.argnames})
        except PluginError:
            raise
        except Exception as error:
            raise PluginError(f"{where} failed in {hook_name}: {type(error).__name__}: {error}") from error
    return found


def get(stage: str, name: str) -> Registered:
    """The component registered under ``name``, or a clear error listing the names that exist."""
    components = registry(stage)
    if name not in components:
        available = ", ".join(components) or "none installed"
        raise PluginError(f"unknown {STAGES[stage].table} '{name}' (available: {available})")
    return components[name]


def build(stage: str, name: str, config: Config) -> Component:
    """An instance of the component ``name``, with the settings of its table in the configuration
    (``[encoder.NAME]`` for an encoder)."""
    return get(stage, name).component(**config.table(f"{STAGES[stage].table}.{name}"))


def register_commands(cli: Callable) -> None:
    """Let plug-ins add subcommands to the ``mer`` group."""
    loaded().manager.hook.register_commands(cli=cli)


def reset() -> None:
    """Forget what was loaded, so that the next call reloads the entry points (used by tests)."""
    loaded.cache_clear()
    registry.cache_clear()


def describe(stage: str, registered: Registered) -> dict[str, object]:
    """What ``mer plugins`` shows of one component: its declared contract and where it comes from."""
    component = registered.component
    row: dict[str, object] = {
        "name": component.name,
        "version": component.version,
        "description": component.description,
        "plugin": registered.provenance.plugin,
        "package": registered.provenance.package,
        "package_version": registered.provenance.package_version,
        "options": [option.name for option in component.options],
    }
    if stage == "encoders":
        dim = getattr(component, "dim", None)  # a property when the width depends on settings
        row.update(modality=component.modality, level=component.level, dim=dim if isinstance(dim, int) else None,
                   level_setting=component.level_option and f"{STAGES[stage].table}.{component.name}."
                                                            f"{component.level_option}")
    elif stage == "reasoners":
        row["needs_network"] = component.needs_network
    elif stage == "losses":
        row["uses_embeddings"] = component.uses_embeddings
    return row


def inventory() -> dict[str, list[dict[str, object]]]:
    """Every installed component, by stage."""
    return {stage: [describe(stage, r) for r in registry(stage).values()] for stage in STAGES}
