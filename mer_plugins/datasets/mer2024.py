"""(being written)"""
from mercli.hookspecs import hookimpl


@hookimpl
def register_datasets(register):
    pass
