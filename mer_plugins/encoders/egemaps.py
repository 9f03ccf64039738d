"""(being written)"""
from mercli.hookspecs import hookimpl


@hookimpl
def register_encoders(register):
    pass
