"""The cache package is its own inventory: the table in `mmdistill/cache/__init__.py` names every
kind `mmdistill cache` lists (`KINDS`), in order, with the module that writes it and the function
of `keys.py` that hashes its key, and no cache lives anywhere else. A new kind, or a key moved
out of `keys.py`, fails here until the table says so."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mmdistill.cache as cache
from mmdistill.cache import KINDS, keys

CACHE = Path(cache.__file__).parent
SRC = CACHE.parent
# a row of the table: `<kind>/...   <module>.py, ...`
ROW = re.compile(r"^([a-z_]+)/\S*\s+([a-z_]+\.py)\b", re.M)


def _rows() -> list[tuple[str, str]]:
    return ROW.findall(cache.__doc__)


def _imported_from_keys(module: Path) -> set[str]:
    return {a.name for node in ast.walk(ast.parse(module.read_text()))
            if isinstance(node, ast.ImportFrom) and node.module == "mmdistill.cache.keys" for a in node.names}


def test_the_table_lists_every_kind_in_order_with_a_module_that_exists():
    rows = _rows()
    assert [kind for kind, _ in rows] == list(KINDS)
    assert all((CACHE / module).is_file() for _, module in rows)


def test_every_module_of_the_package_is_named_in_the_inventory():
    assert [p.name for p in sorted(CACHE.glob("*.py"))
            if p.name != "__init__.py" and p.name not in cache.__doc__] == []


def test_each_kind_takes_its_folder_from_kind_dir_and_its_key_from_keys():
    for kind, module in _rows():
        source = (CACHE / module).read_text()
        assert f'kind_dir(config, "{kind}")' in source, module
        assert any(name.endswith("_key") for name in _imported_from_keys(CACHE / module)), module


def test_every_key_function_is_named_in_the_inventory():
    functions = [name for name in vars(keys) if name.endswith("_key") and callable(getattr(keys, name))]
    assert len(functions) == len(KINDS)
    assert [f for f in functions if f"keys.{f}" not in cache.__doc__] == []


def test_nothing_outside_the_package_builds_a_path_in_the_cache_directory():
    outside = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
               if CACHE not in p.parents and re.search(r"\.cache_dir\b", p.read_text())]
    assert outside == []
