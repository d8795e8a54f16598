"""benchmarks/defaults.py merges a re-measurement into earlier results (--tables-from … --replace-from …)."""

import json

from benchmarks import defaults


def row(sampler, steps, schedule, black, **kw):
    return {'witness': 'embedded', 'sampler': sampler, 'steps': steps, 'schedule': schedule, 'sigmas': [],
            'black': black, 'white': 1 - black, **kw}


DATA = {'n': 8, 'mean': 0.5, 'spread': 0.25, 'solid': {},
        'band': {'n': 4, 'spread_lo': 0.1, 'spread_hi': 0.3, 'w1_p90': 0.1, 'tv_p90': 0.2, 'edges': [0.2, 0.5, 0.8]}}


def test_replace_rows_replaces_whole_cases_and_keeps_order():
    """Every earlier row of a re-measured (witness, sampler, steps) goes — every schedule, with its unconditional
    samples —, the others stay, and samplers keep their first-seen order."""
    old = [row('euler', 12, 'native', 0.01), row('dpmpp_sde', 12, 'native', 0.02, uncond=[0.3, 0.4]),
           row('dpmpp_sde', 12, 'normal top=128', 0.03), row('dpmpp_sde', 28, 'native', 0.04),
           row('lms', 12, 'native', 0.05)]
    new = [row('dpmpp_sde', 12, 'native', 0.06), row('lms', 20, 'native', 0.07), row('euler', 50, 'native', 0.08)]
    rows, data = defaults.replace_rows(old, {'embedded': DATA}, new, {'embedded': {**DATA, 'band': {'n': 0}}})
    assert [(r['sampler'], r['steps'], r['schedule'], r['black']) for r in rows] == [
        ('euler', 12, 'native', 0.01), ('euler', 50, 'native', 0.08), ('dpmpp_sde', 12, 'native', 0.06),
        ('dpmpp_sde', 28, 'native', 0.04), ('lms', 12, 'native', 0.05), ('lms', 20, 'native', 0.07)]
    assert 'uncond' not in rows[2] and data['embedded']['band']['n'] == 4       # the earlier data's band stays


def test_tables_from_json_with_replace_from_row_logs(tmp_path):
    """The command line: a results JSON, row logs replacing its cases, a note under the header."""
    (tmp_path / 'old.json').write_text(json.dumps({'rows': [row('euler', 12, 'native', 0.01),
                                                           row('euler', 12, 'karras ρ=7', 0.02)],
                                                  'data': {'embedded': DATA}}))
    for name, r in (('a', row('euler', 12, 'native', 0.3)), ('b', row('euler', 20, 'native', 0.04))):
        (tmp_path / f'{name}.jsonl').write_text(json.dumps({**r, 'data': {**DATA, 'band': {'n': 0}}}) + '\n')
    payload = defaults.main(['--tables-from', str(tmp_path / 'old.json'), '--replace-from',
                             f'{tmp_path / "a.jsonl"},{tmp_path / "b.jsonl"}', '--note', 'Rows from 2026-12-04.',
                             '--out', str(tmp_path / 'out')])
    assert [(r['steps'], r['schedule'], r['black']) for r in payload['rows']] == [(12, 'native', 0.3),
                                                                                 (20, 'native', 0.04)]
    md = (tmp_path / 'out' / 'defaults_study.md').read_text()
    assert md.splitlines()[1] == 'Rows from 2026-12-04.' and '0.300 / 0.700 ✗' in md and '0.040 / 0.960' in md
