"""Fault-injection hooks around every docstore call (DESIGN.md 6.1 rule 6).

`HookedStore` wraps any store and calls `hook.before(op, key)` and `hook.after(op, key)` around each
call. A hook may raise `Crash` (the process dies here: nothing after runs), raise `Ambiguous` after
the call (applied, but the caller is told it failed), or pause the caller. Tests and the fault
harness in tests/harness build on this; production code never wraps its store.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .base import Store

MUTATING = frozenset({"insert", "replace", "upsert", "remove", "counter"})


class Crash(BaseException):
    """Raised by a fault hook to simulate the process dying at this point.

    A BaseException so that no `except Exception` in the code under test can swallow it.
    """


class Hook:
    def before(self, op: str, key: str) -> None:
        pass

    def after(self, op: str, key: str) -> None:
        pass


class HookedStore(Store):
    def __init__(self, inner: Store, hook: Hook):
        self.inner = inner
        self.hook = hook
        self.prefix = inner.prefix

    def _call(self, op: str, key: str, fn):
        self.hook.before(op, key)
        result = fn()
        self.hook.after(op, key)
        return result

    def get(self, key: str):
        return self._call("get", key, lambda: self.inner.get(key))

    def get_fields(self, key: str, fields: Sequence[str]):
        return self._call("get_fields", key, lambda: self.inner.get_fields(key, fields))

    def get_multi(self, keys: Iterable[str]):
        keys = list(keys)
        return self._call("get_multi", ",".join(keys[:3]), lambda: self.inner.get_multi(keys))

    def insert(self, key: str, value: Any) -> int:
        return self._call("insert", key, lambda: self.inner.insert(key, value))

    def replace(self, key: str, value: Any, cas: int) -> int:
        return self._call("replace", key, lambda: self.inner.replace(key, value, cas))

    def upsert(self, key: str, value: Any) -> int:
        return self._call("upsert", key, lambda: self.inner.upsert(key, value))

    def remove(self, key: str, cas: int | None = None) -> None:
        return self._call("remove", key, lambda: self.inner.remove(key, cas))

    def counter(self, key: str, delta: int = 1, initial: int = 0) -> int:
        return self._call("counter", key, lambda: self.inner.counter(key, delta, initial))

    def dump(self):
        return self.inner.dump()
