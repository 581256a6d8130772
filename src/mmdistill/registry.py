"""A tiny name -> factory registry, used for everything a user picks by name in a config.

Backbones, fusion modules, loss terms and data sources all live in one of these, so adding a
new one is a decorator on a class, and an unknown name is an error that lists the known ones.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from mmdistill.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """Look up `name`; `key` is the config path to blame when it is unknown."""
        if name not in self._items:
            where = f"{key}: " if key else ""
            raise UserError(f"{where}unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self._items))}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
