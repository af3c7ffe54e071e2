"""House rules that a merge can break: short functions in redjax/, README's package map matching
the tree, every config key read somewhere, ruff clean."""

import ast
import dataclasses
import os
import re
import shutil
import subprocess

import pytest

from redjax import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "redjax")
MAX_LINES = 80
# Over the limit in files that other branches are rewriting (the sampler's sub-batches, the
# attention kernels, the split of rewards/math.py). Each must still exist and still be long,
# so this list cannot go stale: when one is fixed, the test asks to drop it from here.
PENDING: set[str] = set()  # functions known to be over the limit, each to be split


def sources(top: str = PKG) -> list[str]:
    """Every .py file under `top`."""
    return sorted(
        os.path.join(d, f) for d, _, files in os.walk(top) for f in files if f.endswith(".py")
    )


def long_functions() -> dict[str, str]:
    """{"file:function": "file:line function() has N lines"} of functions over the limit."""
    out = {}
    for path in sources():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    rel = os.path.relpath(path, ROOT)
                    out[f"{rel}:{node.name}"] = f"{rel}:{node.lineno} {node.name}() has {n} lines"
    return out


def test_no_long_functions():
    """No function in redjax/ is longer than 80 lines (docstring and body included)."""
    long = long_functions()
    new = [msg for key, msg in long.items() if key not in PENDING]
    assert not new, f"functions over {MAX_LINES} lines:\n" + "\n".join(new)
    fixed = sorted(PENDING - set(long))
    assert not fixed, f"now within {MAX_LINES} lines: remove from PENDING in this file: {fixed}"


def test_train_run_is_short():
    """The loop reads top to bottom: train.run stays under 60 lines."""
    with open(os.path.join(PKG, "train.py")) as f:
        tree = ast.parse(f.read())
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    assert run.end_lineno - run.lineno + 1 < 60


def package_map() -> set[str]:
    """The modules and packages README's package map names (`redjax/x.py`, `redjax/y/`)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Package map", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(redjax/[\w/]+(?:\.py|/))`", section))


def test_readme_package_map_matches_the_tree():
    """Every top-level module and sub-package of redjax/ is in README's package map, and the map
    names nothing that is not there."""
    tree = set()
    for name in os.listdir(PKG):
        path = os.path.join(PKG, name)
        if name.endswith(".py") and name != "__init__.py":
            tree.add(f"redjax/{name}")
        elif os.path.isfile(os.path.join(path, "__init__.py")):
            tree.add(f"redjax/{name}/")
    listed = package_map()
    assert not tree - listed, f"modules missing from README's package map: {sorted(tree - listed)}"
    assert not listed - tree, (
        f"README's package map names what is not in redjax/: {sorted(listed - tree)}"
    )


def config_keys() -> list[tuple[str, str]]:
    """(section, field) of every config key; section "" for top-level scalars."""
    out = []
    for f in dataclasses.fields(config.Config):
        sub = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(sub):
            out += [(f.name, g.name) for g in dataclasses.fields(sub)]
        else:
            out.append(("", f.name))
    return out


def test_every_config_key_is_read():
    """Each config key is read somewhere in redjax/ other than config.py (an attribute access
    `.name` or the name in a preset), so a key cannot sit in the config doing nothing."""
    code = ""
    for path in sources():
        if os.path.basename(path) != "config.py":
            with open(path) as f:
                code += f.read()
    unread = [f"{s}.{k}".lstrip(".") for s, k in config_keys() if not re.search(rf"\.{k}\b", code)]
    assert not unread, f"config keys read nowhere: {unread}"


@pytest.mark.parametrize("args", [["check"], ["format", "--check"]], ids=["check", "format"])
def test_ruff(args):
    """ruff check and ruff format --check are clean on redjax/, tests/ and bench/."""
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    out = subprocess.run(
        [ruff, *args, "redjax", "tests", "bench"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
