"""redjax: RED (Recall-Extend Dynamics) post-training for small reasoning language models."""

import importlib.metadata as _m
import os as _os
import re as _re


def _version() -> str:
    """The installed version; from a plain checkout (not installed), pyproject.toml's, so that
    `PYTHONPATH=. python -c "import redjax"` works without `pip install`."""
    try:
        return _m.version("redjax")
    except _m.PackageNotFoundError:
        pyproject = _os.path.join(_os.path.dirname(_os.path.dirname(__file__)), "pyproject.toml")
        try:
            with open(pyproject) as f:
                found = _re.search(r'^version\s*=\s*"([^"]+)"', f.read(), _re.M)
        except OSError:
            found = None
        return found.group(1) if found else "0+unknown"


__version__ = _version()
