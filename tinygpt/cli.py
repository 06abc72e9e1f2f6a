"""Command-line flags made from config dataclasses: one flag per field, help from the field's metadata.

Flags that are not given stay out of the parsed namespace, so a preset or the dataclass defaults fill
them; `config_from_args` builds a new config and never mutates the one it was passed.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(element type, is_list) of a field type like int, str | None or list[str]."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        origin = typing.get_origin(tp)
    if origin in (list, tuple):
        return typing.get_args(tp)[0], True
    return tp, False


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, title: str | None = None,
                       defaults: Any = None) -> None:
    """Add `--field-name` for every field of `cls`; `defaults` (an instance) only shapes the help text."""
    group = parser.add_argument_group(title or cls.__name__)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp, is_list = _base_type(hints[f.name])
        default = getattr(defaults, f.name) if defaults is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())
        kw: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS,
                                  help=f"{f.metadata.get('help', '')} (default: {default})".strip())
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = tp
            if "choices" not in kw:  # argparse then shows them: {strict,replace}
                kw["metavar"] = f.metadata.get("metavar", f.name.upper())
            if is_list:
                kw["nargs"] = "+"
        group.add_argument("--" + f.name.replace("_", "-"), **kw)


def config_from_args(base: T, args: argparse.Namespace) -> T:
    """A copy of `base` with every field that was given on the command line replaced."""
    names = {f.name for f in dataclasses.fields(base)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return dataclasses.replace(base, **given)
