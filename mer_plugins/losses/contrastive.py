"""(being written)"""
from mercli.hookspecs import hookimpl


@hookimpl
def register_losses(register):
    pass
