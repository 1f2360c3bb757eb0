"""A flag declared once: `flag()` puts its default, help and limits on a dataclass field, and from
that one declaration follow the argparse flag, its help, the check of a given value and the check
of the value a hand-edited config.json holds.

Why not transformers' HfArgumentParser, which also turns dataclass fields into flags: importing it
costs over a second (here: 1.5 s), where `--help` and a bad flag must answer at once; it has no
limits (min, finite, non-empty) to check; and it parses into a new dataclass with every default
filled in, where the precedence of presets and a resumed run's config.json needs only the flags
given. What is kept here is what it lacks: the limits and the one-line errors.
"""
import argparse
import dataclasses
import math
import struct
import types
import typing
from dataclasses import dataclass, field
from typing import Any, NoReturn


class ConfigError(ValueError):
    """A bad flag or run directory; the message names the input and the fix."""


@dataclass(frozen=True)
class Limits:
    """What a flag's value may be, beyond its type; for a tuple, each of its items.

    Both bounds as floats read as an interval, "must be in [0, 1)"; otherwise each bound speaks
    for itself, "must be at least 1", "must be 0 or more", "must be above 0"."""

    min: float | None = None
    max: float | None = None
    exclusive_min: bool = False
    exclusive_max: bool = False
    # argparse's float() takes nan and inf, and so does JSON; and a float must fit float32, where the
    # networks and optimizers compute with it (a learning rate of 1e39 is inf there, 1e-50 is 0).
    finite: bool = True
    non_empty: bool = False  # an empty --out or --data would mean the current folder
    why: str = ""  # said after the refusal, in brackets
    example: str = ""  # a value that fits, said after the refusal
    refusal: str = ""  # the words of the refusal, when the usual ones would not do

    def problem(self, value: Any) -> str | None:
        """Why `value` does not fit these limits, or None."""
        if self.non_empty and isinstance(value, str) and not value.strip():
            return "empty; give a value, or leave the flag out for its default"
        items = value if isinstance(value, tuple) else (value,)
        numbers = [item for item in items if isinstance(item, (int, float)) and not isinstance(item, bool)]
        floats = [item for item in numbers if isinstance(item, float)]
        if self.finite and not all(map(math.isfinite, floats)):
            return "must be a finite number"
        if self.finite and (misfit := next(filter(None, map(float32_problem, floats)), None)):
            return misfit
        side = next((side for side in map(self._outside, numbers) if side), None)
        if side is None:
            return None
        if self.refusal:
            return self.refusal
        refusal = ("each " if isinstance(value, tuple) else "") + "must be " + self._bound(side)
        return refusal + (f" ({self.why})" if self.why else "") + (f", e.g. {self.example}" if self.example else "")

    def _outside(self, number: float) -> str | None:
        """"min" or "max": the bound `number` is beyond."""
        if self.min is not None and (number <= self.min if self.exclusive_min else number < self.min):
            return "min"
        if self.max is not None and (number >= self.max if self.exclusive_max else number > self.max):
            return "max"
        return None

    def _bound(self, side: str) -> str:
        if isinstance(self.min, float) and isinstance(self.max, float):
            return f"in {'(' if self.exclusive_min else '['}{self.min:g}, {self.max:g}{')' if self.exclusive_max else ']'}"
        if side == "min":
            if self.exclusive_min:
                return f"above {self.min:g}"
            return "0 or more" if self.min == 0 else f"at least {self.min:g}"
        return f"below {self.max:g}" if self.exclusive_max else f"at most {self.max}"

    def described(self) -> str:
        """The limits for --help; empty when there are none to tell."""
        if self.min is not None and self.max is not None:
            return self._bound("min") if isinstance(self.max, float) else f"{self.min}..{self.max}"
        return "; ".join(self._bound(side) for side in ("min", "max") if getattr(self, side) is not None)


FLOAT32_MAX, FLOAT32_TINIEST = 3.4028234663852886e38, 1.401298464324817e-45  # the largest; the smallest above 0


def float32_problem(value: float) -> str | None:
    """Why float32 cannot hold `value` (it overflows to inf, or rounds to 0), or None."""
    try:  # struct rounds as float32 does: a value that rounds to FLOAT32_MAX still fits
        held = struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:  # older Pythons refuse what newer ones round to inf
        held = math.inf
    if math.isinf(held):
        return f"must fit in float32 (at most {FLOAT32_MAX:.2g} in size), the precision training computes in"
    if value and not held:
        return f"must fit in float32 ({value:g} rounds to 0 there; the smallest is {FLOAT32_TINIEST:.2g}), the precision training computes in"
    return None


def flag(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    exclusive_min: bool = False,
    exclusive_max: bool = False,
    finite: bool = True,
    non_empty: bool = False,
    why: str = "",
    example: str = "",
    refusal: str = "",
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field that is a flag: its default, help, limits and argparse's own settings
    (choices, nargs, type, metavar, const)."""
    limits = Limits(min, max, exclusive_min, exclusive_max, finite, non_empty, why, example, refusal)
    return field(default=default, metadata={"help": help, "limits": limits, **argparse_kwargs})


def redeclared(config_cls: type, name: str, default: Any, help: str | None = None, **argparse_kwargs: Any) -> Any:
    """`config_cls`'s flag `name` with a recipe's own default (and help or choices, where given):
    its limits stay those declared on the base field."""
    metadata = {**config_cls.__dataclass_fields__[name].metadata, **argparse_kwargs, **({"help": help} if help else {})}
    return field(default=default, metadata=metadata)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown(value: Any) -> str:
    """A value as it was typed on the command line."""
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def choice_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` is not one of the field's choices, or None (argparse's own check, for config.json)."""
    choices = f.metadata.get("choices")
    if choices is None or value in choices or (value is None and f.default is None):
        return None
    return f"not one of {', '.join(map(str, choices))}"


def limit_problem(f: dataclasses.Field, value: Any) -> str | None:
    """Why `value` does not fit the field's declared limits, or None (None fits an optional flag)."""
    return None if value is None else f.metadata.get("limits", Limits()).problem(value)


def check_limits(config: Any) -> None:
    """Each field's declared limits, for the values the flags, presets and config.json gave."""
    found = [(f.name, getattr(config, f.name), limit_problem(f, getattr(config, f.name))) for f in dataclasses.fields(config)]
    found = [(name, value, problem) for name, value, problem in found if problem]
    if not found:
        return
    # Non-finite and empty values first, then the bounds: the order the checks have always had.
    name, value, problem = min(found, key=lambda each: not each[2].startswith(("empty", "must be a finite")))
    typed_as = repr(value) if problem.startswith("empty") else shown(value)
    raise ConfigError(f"{flag_name(name)} {typed_as}: {problem}")


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one `error:` line, like every other bad input (its usage, dozens of
    lines for these flags, stays in --help); exit code 2, as argparse's."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see --help)\n")


def whole_number(minimum: int) -> typing.Callable[[str], int]:
    """An argparse type for a count outside a config (a tool's own flag): its limit checked as the
    argument is parsed, said in one line by OneLineParser."""
    limits = Limits(min=minimum)

    def parsed(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if problem := limits.problem(value):
            raise argparse.ArgumentTypeError(f"{value}: {problem}")
        return value

    return parsed


def build_parser(config_cls: type, description: str) -> argparse.ArgumentParser:
    # SUPPRESS defaults: the namespace then holds only the flags the user gave, which must win.
    parser = OneLineParser(description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(config_cls):
        add_flag(parser, f)
    return parser


def add_flag(parser: argparse.ArgumentParser, f: dataclasses.Field, **overrides: Any) -> None:
    """The field's flag on `parser` (another tool's parser too, which declares it no second time)."""
    kwargs = {**{k: v for k, v in f.metadata.items() if k != "limits"}, **overrides}
    limits = f.metadata.get("limits", Limits()).described()
    kwargs["help"] = f"{kwargs['help']} (default: {kwargs.get('default', f.default)}{'; ' + limits if limits else ''})"
    if isinstance(f.default, bool):
        kwargs["action"] = argparse.BooleanOptionalAction
    elif "type" not in kwargs:
        kwargs["type"] = type(f.default) if f.default is not None else str
    parser.add_argument(flag_name(f.name), dest=f.name, **kwargs)


def fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value can stand for a field of type `hint` (JSON has lists where fields have tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON's NaN and Infinity included: json.loads takes them
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(fits(item, args[0]) for item in value)
        return len(value) == len(args) and all(fits(item, arg) for item, arg in zip(value, args))
    return True


def described_type(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(described_type(arg) for arg in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {described_type(args[0]).removeprefix('a ')}s"
        return f"a list of {len(args)} {described_type(args[0]).removeprefix('a ')}s"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}.get(
        hint, str(hint)
    )


def typed(value: Any) -> Any:
    """A JSON value as a field holds it: tuples where JSON has lists."""
    return tuple(value) if isinstance(value, list) else value
