"""kdiff_ztsnr.generation.names: package and A1111/Forge sampler and schedule names (labels, aliases, the
pre-1.9 "sampler + schedule" names) to the package's, and "did you mean" for the rest."""

import pytest

from kdiff_ztsnr.generation import names as N
from kdiff_ztsnr.generation.params import SAMPLER_NAMES, SCHEDULES


def test_package_names_are_themselves():
    assert all(N.resolve_sampler(n) == (n, None) for n in SAMPLER_NAMES)
    assert all(N.resolve_schedule(n) == n for n in SCHEDULES)


def test_a1111_labels_round_trip():
    for name in SAMPLER_NAMES:
        label = N.A1111_SAMPLERS[name]
        assert N.resolve_sampler(label) == N.resolve_sampler(label.lower()) == (name, None), label
        for schedule, schedule_label in N.A1111_SCHEDULES.items():           # "DPM++ 2M Karras"
            assert N.resolve_sampler(f'{label} {schedule_label}') == (name, schedule), (label, schedule_label)
    for schedule, label in N.A1111_SCHEDULES.items():
        assert N.resolve_schedule(label) == schedule
    assert set(N.A1111_SCHEDULES.values()) < set(N.A1111_SCHEDULE_LIST)
    assert N.resolve_schedule(N.AUTOMATIC) == 'recommended' and N.resolve_schedule('Uniform') == 'native'


@pytest.mark.parametrize('name, want', [('k_euler_a', ('euler_ancestral', None)), ('euler_a', ('euler_ancestral', None)),
                                        ('k_dpmpp_2m', ('dpmpp_2m', None)), ('k_dpmpp_2m_ka', ('dpmpp_2m', 'karras')),
                                        ('DPM++ 2M SDE Karras', ('dpmpp_2m_sde', 'karras')),
                                        ('dpm2_a', ('dpm_2_ancestral', None)), ('k_lms_exp', ('lms', 'exponential')),
                                        ('  Euler a  ', ('euler_ancestral', None)),
                                        ('Euler SGM Uniform', ('euler', 'sgm_uniform'))])
def test_aliases(name, want):
    assert N.resolve_sampler(name) == want


@pytest.mark.parametrize('name', ['DPM fast', 'dpm_adaptive', 'k_dpm_ad', 'DPM adaptive Karras'])
def test_samplers_without_a_schedule_are_refused(name):
    with pytest.raises(ValueError, match=f"^sampler '{name}' \\(dpm_(fast|adaptive)\\) takes .* cannot start from σ = ∞"):
        N.resolve_sampler(name)


def test_unknown_sampler_suggests_in_the_style_typed():
    with pytest.raises(ValueError) as e:
        N.resolve_sampler('eulr_ancestral')
    assert str(e.value).startswith("unknown sampler 'eulr_ancestral' (did you mean 'euler_ancestral'?); choose from ")
    assert ', '.join(SAMPLER_NAMES) in str(e.value) and '"DPM++ 2M Karras"' in str(e.value)
    with pytest.raises(ValueError) as e:
        N.resolve_sampler('DPM++ 2N')                                             # A1111's label for A1111's style
    assert str(e.value).startswith("unknown sampler 'DPM++ 2N' (did you mean 'DPM++ 2M'?); choose from ")
    with pytest.raises(ValueError, match=r"^unknown sampler 'zzzz'; choose from"):
        N.resolve_sampler('zzzz')


def test_unknown_or_missing_schedules():
    with pytest.raises(ValueError, match=r"^unknown schedule 'karas' \(did you mean 'karras'\?\); choose from"):
        N.resolve_schedule('karas')
    with pytest.raises(ValueError, match=r"^unknown schedule 'Exponentail' \(did you mean 'Exponential'\?\)"):
        N.resolve_schedule('Exponentail')
    for name in ('Align Your Steps', 'DDIM'):
        with pytest.raises(ValueError, match=f"^A1111's schedule '{name}' is not one this package provides; "
                                             f"choose from {', '.join(SCHEDULES)}"):
            N.resolve_schedule(name)
