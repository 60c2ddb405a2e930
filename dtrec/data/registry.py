"""Data readers by name: the formats `dtrec prepare <kind>` reads, filled by the `register_reader` decorator.

A reader module defines its options (a dataclass extending `PrepareOptions`; each field is a flag of
`dtrec prepare <kind>`, its help in the field's `metadata["help"]`) and a function
`read(options, out) -> Dataset`, decorated with `register_reader(name, help, options)`.

This module registers nothing itself and imports no reader: `dtrec.data.prepare` imports the built-in
ones (`movielens`, `unisrec`, `jsonl`), whose decorators fill the table. Adding a format is adding its
module there (or importing one's own module before calling `prepare`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dtrec.registry import Registry

if TYPE_CHECKING:
    from dtrec.data.catalog import Dataset


@dataclass(kw_only=True)
class PrepareOptions:
    """What every `dtrec prepare <kind>` takes beside its reader's own options (a reader may change defaults)."""

    kcore: int = field(default=0, metadata={"help": "iterated k-core on users and items (0: off)"})
    cold_fraction: float = field(default=0.0, metadata={
        "help": "fraction of items held out of all training data for the cold-start split"})
    seed: int = 42


ReadFn = Callable[[Any, Path], "Dataset"]


@dataclass(frozen=True)
class Reader:
    """One registered format: its name, one line of help, its options class and its read function."""

    name: str
    help: str
    options: type[PrepareOptions]
    read: ReadFn

    def make_options(self, **values: Any) -> PrepareOptions:
        """The reader's options from keyword values; None means the default (ValueError for a name it lacks)."""
        names = {f.name for f in fields(self.options)}
        unknown = sorted(k for k, v in values.items() if v is not None and k not in names)
        if unknown:
            raise ValueError(f"the {self.name} reader takes no option(s) {', '.join(unknown)}; "
                             f"its options: {', '.join(f.name for f in fields(self.options))}")
        missing = [f.name for f in fields(self.options)
                   if f.default is MISSING and f.default_factory is MISSING and values.get(f.name) is None]
        if missing:
            raise ValueError(f"the {self.name} reader needs {', '.join(missing)}")
        return self.options(**{k: v for k, v in values.items() if v is not None})


_READERS: Registry[Reader] = Registry("reader", lambda name, known: (
    f"unknown source kind {name!r}; expected {', '.join(known[:-1])} or {known[-1]}" if len(known) > 1
    else f"unknown source kind {name!r}; expected {', '.join(known)}"))


def register_reader(name: str, help: str, options: type[PrepareOptions]) -> Callable[[ReadFn], ReadFn]:
    """Decorator adding `read(options, out) -> Dataset` as the reader of format `name`."""
    if not issubclass(options, PrepareOptions):
        raise TypeError(f"the options of reader {name!r} must extend PrepareOptions")

    def deco(read: ReadFn) -> ReadFn:
        _READERS.add(name, Reader(name, help, options, read))
        return read

    return deco


# the table's own methods, under the names callers use
unregister_reader = _READERS.remove
list_readers = _READERS.entries
get_reader = _READERS.get
