"""The plug-in contract: every hook a plug-in may implement.

A plug-in is a module (or object) registered under the entry-point group ``mer``. It implements any
of the hooks below with the ``hookimpl`` marker. Each ``register_*`` hook receives a ``register``
callable and calls it once per component it provides; the component types live in
:mod:`mercli.contracts`; a plug-in imports them, and everything else it uses of the core, from
:mod:`mercli.plugin_api`.

Example, in a third-party package::

    from mercli.plugin_api import Encoder, hookimpl

    class MyEncoder(Encoder):
        name = "my-encoder"
        ...

    @hookimpl
    def register_encoders(register):
        register(MyEncoder)
"""

from __future__ import annotations

from typing import Callable

import click
from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("mer")
hookimpl = HookimplMarker("mer")


@hookspec
def register_encoders(register: Callable) -> None:
    """Register feature encoders: ``register(EncoderSubclass)`` for each one.

    An encoder turns one decoded clip into the features of one modality (see ``contracts.Encoder``).
    """


@hookspec
def register_transcribers(register: Callable) -> None:
    """Register speech recognisers: ``register(TranscriberSubclass)`` for each one.

    The extract stage uses one to get a transcript for the text encoders when the labels file has
    none (see ``contracts.Transcriber``).
    """


@hookspec
def register_reasoners(register: Callable) -> None:
    """Register reasoners: ``register(ReasonerSubclass)`` for each one.

    A reasoner writes a per-modality reasoning trace for one clip (see ``contracts.Reasoner``).
    """


@hookspec
def register_losses(register: Callable) -> None:
    """Register training losses: ``register(LossSubclass)`` for each one (see ``contracts.Loss``)."""


@hookspec
def register_datasets(register: Callable) -> None:
    """Register dataset readers: ``register(DatasetSubclass)`` for each one.

    A dataset reader turns a labels file or a folder convention into labelled clips
    (see ``contracts.Dataset``).
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``mer`` command group, for example ``cli.command()(my_command)``."""
