"""kdiff_ztsnr.rules: the one validator behind the generation parameters and the training config."""

import math

from kdiff_ztsnr.generation.params import FIELDS
from kdiff_ztsnr.rules import Rule, fits
from kdiff_ztsnr.training.schema import SCHEMA


def test_fits():
    number = Rule((float,), 0, 1)
    assert fits(number, 0) and fits(number, 1.) and fits(number, 0.5)
    assert not any(fits(number, v) for v in (-1e-9, 1.0000001, math.nan, math.inf, True, '0.5', None))
    assert fits(Rule((float,), 0, 1, gt=True), 1e-9) and not fits(Rule((float,), 0, 1, gt=True), 0)
    assert fits(Rule((int,), optional=True), None) and not fits(Rule((int,)), 2.0)
    assert fits(Rule((bool,)), False) and not fits(Rule((int,)), False)
    assert fits(Rule((str,), hi=3), 'abc') and not fits(Rule((str,), hi=3), 'abcd')       # a string's length
    assert fits(Rule((str,), choices=('a', 'b')), 'b') and not fits(Rule((str,), choices=('a', 'b')), 'c')
    pair = Rule((list,), length=(2, 2))
    assert fits(pair, [1, 2]) and not fits(pair, [1]) and not fits(pair, (1, 2))


def test_both_tables_are_rules():
    def rows(table):
        for rule in table.values():
            yield rule
            if rule.section:
                yield from rows(rule.section)
    sections = [Rule((dict,), section=s) for s in SCHEMA.values()]
    assert all(isinstance(r, Rule) for r in FIELDS.values())
    assert all(isinstance(r, Rule) for s in sections for r in rows({'s': s}))
