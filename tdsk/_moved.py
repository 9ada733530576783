"""The command-line tools moved into :mod:`tdsk.cli` (the library apart from its tools); their
old module paths stay valid as aliases: ``import tdsk.evaluate`` gives the module object of
``tdsk.cli.evaluate`` itself (so attributes, patches and pickles agree), and
``python -m tdsk.train`` runs ``tdsk/cli/train.py`` as ``__main__``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

# old path -> new path (a prefix: tdsk.demo.__main__ -> tdsk.cli.demo.__main__)
ALIASES = {
    "tdsk.train": "tdsk.cli.train",
    "tdsk.evaluate": "tdsk.cli.evaluate",
    "tdsk.predict": "tdsk.cli.predict",
    "tdsk.export": "tdsk.cli.export",
    "tdsk.extract": "tdsk.cli.extract",
    "tdsk.doctor": "tdsk.cli.doctor",
    "tdsk.demo": "tdsk.cli.demo",
    "tdsk.data.check": "tdsk.cli.check",
    "tdsk.data.prepare": "tdsk.cli.prepare",
}


def _target(fullname: str):
    for old, new in ALIASES.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old):]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str, real_spec):
        self.target, self.real_spec = target, real_spec

    def create_module(self, spec):
        return importlib.import_module(self.target)  # the one module object, under both names

    def exec_module(self, module):
        pass  # already executed under its new name

    # what runpy (python -m <old path>) asks for
    def get_code(self, fullname):
        return self.real_spec.loader.get_code(self.target)

    def is_package(self, fullname):
        return self.real_spec.submodule_search_locations is not None


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = _target(fullname)
        if new is None:
            return None
        real = importlib.util.find_spec(new)
        if real is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, _AliasLoader(new, real), origin=real.origin,
                                               is_package=real.submodule_search_locations is not None)
        if real.submodule_search_locations is not None:
            spec.submodule_search_locations = list(real.submodule_search_locations)
        spec.has_location = real.has_location
        return spec


def install() -> None:
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
