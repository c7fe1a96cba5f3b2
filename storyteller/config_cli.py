"""Command-line flags read from config dataclasses, so a new setting is one line in one place.

A field declared with :func:`option` becomes a flag (``--hidden-size`` from ``hidden_size``,
the type from the annotation, the default from the dataclass); :func:`config_values` reads the
parsed flags back. A numeric field's :class:`Bound` is checked as its flag is parsed and when a
config is read back from a checkpoint, so what ``train`` accepts is what loads. Only argparse
and dataclasses here: the command line parses before torch loads."""

from __future__ import annotations

import argparse
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, field, fields
from typing import Any, NamedTuple

#: The keys :func:`option` writes into a field's metadata.
_HELP, _FLAG, _CHOICES, _METAVAR = "help", "flag", "choices", "metavar"
_FLAG_DEFAULT, _BOUND = "flag_default", "bound"


class Bound(NamedTuple):
    """The range of a numeric value: finite, ``low <= value <= high`` (``<`` at an open end)."""

    low: float
    high: float
    high_open: bool = False
    low_open: bool = False

    def holds(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.low < value if self.low_open else self.low <= value
        return above and (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:.12g}"
        low, high = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {low}{self.low:.12g}, {self.high:.12g}{high}"


#: Any finite number: the range of a number with no bound of its own.
FINITE = Bound(-math.inf, math.inf)


def type_words(kind: type, bound: Bound | None = None) -> str:
    """What a value of ``kind`` within ``bound`` is, in words: ``a number in [0, 1)``."""
    words = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    text = words.get(kind, "a mapping" if kind is dict else kind.__name__)
    return f"{text} {bound}" if bound is not None else text


def number(kind: type, bound: Bound | None = None) -> Callable[[str], Any]:
    """An argparse ``type``: the flag's text as ``kind`` (int or float), finite and within
    ``bound``; anything else is the flag's one-line error (``argument --lr: must be ...``)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:  # not a number, or an integer of more than 4,300 digits
            value = None
        if value is None or not (bound or FINITE).holds(value):
            raise argparse.ArgumentTypeError(f"must be {type_words(kind, bound)}, not {text!r:.40}")
        return value

    parse.bound = bound  # type: ignore[attr-defined]  # the help shows it
    return parse


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: Iterable[Any] | None = None,
    metavar: str | None = None,
    flag_default: Any = MISSING,
    bound: Bound | None = None,
) -> Any:
    """A dataclass field with a command-line flag: ``x: int = option(3, "what x is")``.

    ``help`` may say ``{default}``. A true-or-false field is a switch: ``--x`` turns on a
    False-by-default field, ``--no-x`` turns off a True-by-default one. ``flag``: the flag's
    name when it is not the field's (``epochs`` for ``num_epochs``). ``flag_default``: the
    command line's default; ``None`` means "the run decides" (left out of :func:`config_values`)."""
    given = {_FLAG: flag, _CHOICES: choices, _METAVAR: metavar, _BOUND: bound}
    metadata = {_HELP: help.replace("{default}", str(default))}
    metadata.update((key, value) for key, value in given.items() if value is not None)
    if choices is not None:
        metadata[_CHOICES] = tuple(choices)
    if flag_default is not MISSING:
        metadata[_FLAG_DEFAULT] = flag_default
    return field(default=default, metadata=metadata)


def bounded(bound: Bound, default: Any = MISSING) -> Any:
    """A dataclass field with a range and no flag: ``grad_clip: float = bounded(Bound(0, 9), 5.0)``."""
    return field(default=default, metadata={_BOUND: bound})


def field_bounds(cls: type) -> dict[str, Bound]:
    """``{field name: Bound}`` for the fields of the dataclass ``cls`` that have one."""
    return {f.name: f.metadata[_BOUND] for f in fields(cls) if _BOUND in f.metadata}


def flag_type(cls: type, name: str) -> Callable[[str], Any]:
    """The argparse ``type`` of ``cls``'s numeric field ``name``, for a flag not made by
    :func:`option` (such as ``--beam``)."""
    kind = _without_none(typing.get_type_hints(cls)[name])
    return number(kind, field_bounds(cls).get(name))


class Flag(NamedTuple):
    """One field's flag: ``--epochs``, argparse's ``dest``, the field's type and whether it is
    the ``--no-`` switch of a True-by-default field."""

    name: str
    dest: str
    kind: type
    negated: bool = False

    @property
    def switch(self) -> bool:
        return self.kind is bool


def _without_none(kind: Any) -> Any:
    """``int`` for ``int | None``; ``kind`` itself otherwise."""
    kept = [arg for arg in typing.get_args(kind) if arg is not type(None)]
    is_union = typing.get_origin(kind) in (typing.Union, types.UnionType)
    return kept[0] if is_union and len(kept) == 1 else kind


def config_flags(cls: type) -> dict[str, Flag]:
    """``{field name: Flag}`` for the fields of ``cls`` declared with :func:`option`."""
    hints = typing.get_type_hints(cls)
    flags = {}
    for f in fields(cls):
        if _HELP not in f.metadata:
            continue
        kind = _without_none(hints[f.name])
        negated = kind is bool and f.default is True
        name = f.metadata.get(_FLAG, f.name.replace("_", "-"))
        name = f"no-{name}" if negated else name
        flags[f.name] = Flag(f"--{name}", name.replace("-", "_"), kind, negated)
    return flags


def option_choices(cls: type, name: str) -> tuple:
    """The values ``cls``'s field ``name`` takes (its :func:`option`'s ``choices``)."""
    return next(f for f in fields(cls) if f.name == name).metadata[_CHOICES]


def add_config_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
) -> list[str]:
    """Add the flags of ``cls``'s :func:`option` fields to ``parser`` (``only`` these, in this
    order, when given; never those in ``skip``); returns the names of the fields added."""
    flags, by_name = config_flags(cls), {f.name: f for f in fields(cls)}
    names = list(flags) if only is None else list(only)
    unknown = [name for name in names if name not in flags]
    if unknown:
        raise ValueError(f"{cls.__name__} has no field with a flag named {', '.join(unknown)}")
    names = [name for name in names if name not in set(skip)]
    for name in names:
        flag, meta = flags[name], by_name[name].metadata
        if flag.switch:
            parser.add_argument(flag.name, action="store_true", help=meta[_HELP])
            continue
        kwargs: dict[str, Any] = {"help": meta[_HELP]}
        kwargs["default"] = meta.get(_FLAG_DEFAULT, by_name[name].default)
        if flag.kind in (int, float):
            kwargs["type"] = number(flag.kind, meta.get(_BOUND))
        elif flag.kind is not str:
            kwargs["type"] = flag.kind
        for key in (_CHOICES, _METAVAR):
            if key in meta:
                kwargs[key] = list(meta[key]) if key == _CHOICES else meta[key]
        parser.add_argument(flag.name, **kwargs)
    return names


def config_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The values of ``cls``'s flags in the parsed ``args``, by field name. A flag not asked
    for (``None``, an off ``--x`` switch) is left out, so a default the run decides (an
    embedding width from a vectors file) stays the run's."""
    values = {}
    for name, flag in config_flags(cls).items():
        value = getattr(args, flag.dest)
        if value is None or (flag.switch and not flag.negated and value is False):
            continue
        values[name] = not value if flag.negated else value
    return values


def config_from_args(cls: type, args: argparse.Namespace, **others: Any) -> Any:
    """The dataclass ``cls`` from the parsed ``args`` (fields without a flag: ``others`` or
    their defaults)."""
    return cls(**{**config_values(cls, args), **others})


def config_flags_for(cls: type, values: Mapping[str, Any]) -> list[str]:
    """The flags that give ``values`` (field name -> value) back: the inverse of
    :func:`config_values`. A switch appears only when it differs from its default."""
    flags = config_flags(cls)
    out: list[str] = []
    for name, value in values.items():
        flag = flags[name]
        if flag.switch:
            out += [flag.name] if bool(value) != flag.negated else []
        else:
            out += [flag.name, str(value)]
    return out
