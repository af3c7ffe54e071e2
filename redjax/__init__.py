import importlib.metadata as _m

__version__ = _m.version("redjax")
