"""One validator for what users give, torch-free: a `Rule` says which types a value may have, an inclusive
range (of a number, or of a string's length) or choices, a list's items and length, or a nested section's rows;
`fits` checks a value against it. The generation parameters (`generation.params.FIELDS`) and the training
config (`training.schema.SCHEMA`) are tables of Rules; each table words its errors for its own readers.
"""

import math
from dataclasses import dataclass, field
from typing import Optional


def fmt(x: float) -> str:
    """A bound as written: integers exactly, other numbers short."""
    return str(int(x)) if float(x).is_integer() else f'{x:g}'


@dataclass(frozen=True)
class Rule:
    kinds: tuple                         # accepted Python types, e.g. (int,), (float,), (str,), (list,)
    lo: Optional[float] = None           # inclusive bounds (of a number, a string's length, or a list's items)
    hi: Optional[float] = None
    gt: bool = False                     # lo is exclusive
    choices: tuple = ()
    optional: bool = False               # None is allowed
    item: Optional['Rule'] = None        # list items
    length: Optional[tuple] = None       # (min, max) list length
    section: Optional[dict] = field(default=None, hash=False)   # a nested section's rows
    free: bool = False                   # a dict of free keyword arguments
    option: Optional[str] = None         # the command line's option, where one sets it

    @property
    def kind(self) -> type:
        return self.kinds[0]


def fits(rule: Rule, value) -> bool:
    """Whether value has one of the rule's types (an int for a float, never a bool for a number), is finite,
    among its choices, within its bounds and of its list length (items and sections are checked by the caller,
    which names them)."""
    if value is None:
        return rule.optional
    kinds = rule.kinds + ((int,) if float in rule.kinds else ())
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in rule.kinds):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if rule.choices:
        return value in rule.choices
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        size = len(value) if isinstance(value, str) else value
        if rule.lo is not None and (size <= rule.lo if rule.gt else size < rule.lo):
            return False
        if rule.hi is not None and size > rule.hi:
            return False
    if isinstance(value, list) and rule.length and not rule.length[0] <= len(value) <= rule.length[1]:
        return False
    return True
