"""Errors that name the parameters at fault, so that each front end says them in its own words.

A message marks each parameter it names as ``{name}`` or ``{name=value}`` (value as Python writes it); text
from the user goes in through `quote` (``{{`` stands for ``{``). ``str(error)`` spells the parameters as a Python
caller passes them (``name``, ``name=value``); the command line re-spells them as its options (`spell` with its
own table), so neither reads the other's vocabulary.
"""

import re
from typing import Callable, Optional

PLACE = re.compile(r'\{\{|\{([a-z_][a-z0-9_]*)(?:=([^{}]*))?\}')


def python_name(param: str, value: Optional[str]) -> str:
    """How a Python caller writes a parameter: ``name`` or ``name=value``."""
    return param if value is None else f'{param}={value}'


def quote(text) -> str:
    """User text (a value, a path) as it goes into a message: its braces stay braces."""
    return str(text).replace('{', '{{')


def marked(e: Exception) -> str:
    """An error's message as it goes into another message: a ParamError's marks kept, other text quoted."""
    return e.message if isinstance(e, ParamError) else quote(e)


def spell(message: str, name: Callable[[str, Optional[str]], str] = python_name) -> str:
    """The message with every ``{name}`` / ``{name=value}`` written by name(param, value)."""
    return PLACE.sub(lambda m: '{' if m.group(1) is None else name(m.group(1), m.group(2)), message)


class ParamError(ValueError):
    """A bad argument; the message marks the parameters it names (module docstring)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(spell(message))

    def spell(self, name: Callable[[str, Optional[str]], str]) -> str:
        return spell(self.message, name)


class ParamFileError(ParamError, FileNotFoundError):
    """A parameter that names a file or folder which is not there (or not what it must be)."""


class ParamOSError(ParamError, OSError):
    """A parameter that names a place the system refuses (a folder that cannot be written)."""
