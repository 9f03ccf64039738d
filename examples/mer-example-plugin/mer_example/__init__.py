"""An example mer plug-in: the hook implementations that register its components.

Only ``mercli.plugin_api`` is imported here, and neither numpy nor torch:
``mer --help`` and ``mer plugins`` import every plug-in, so a plug-in's top level must stay light.
"""

from mercli.plugin_api import hookimpl

from mer_example.energy import EnergyContour
from mer_example.losses import LabelSmoothing


@hookimpl
def register_encoders(register):
    register(EnergyContour)


@hookimpl
def register_losses(register):
    register(LabelSmoothing)
