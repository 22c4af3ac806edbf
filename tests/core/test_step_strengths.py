"""Schedule parsing and the step of a sigma, for several samplers' sigma lists."""
import pytest
import torch

from sda_core.step_strengths import ScheduleError, parse_step_strengths, resolve, step_of_sigma, window_strengths


def flow_simple(steps: int, shift: float = 3.0) -> list[float]:
    """ComfyUI's `simple` schedule for a shifted flow model (Z-Image), computed independently."""
    ts = torch.linspace(1.0, 1.0 / 1000, 1000)
    table = shift * ts / (1 + (shift - 1) * ts)
    table = table.flip(0)
    stride = len(table) / steps
    return [float(table[-(1 + int(i * stride))]) for i in range(steps)] + [0.0]


def test_parse_plain_spaced_and_trailing_comma():
    assert parse_step_strengths("1,1,0.5,0") == [1.0, 1.0, 0.5, 0.0]
    assert parse_step_strengths(" 1 , -0.5 ,2, ") == [1.0, -0.5, 2.0]
    assert parse_step_strengths("") is None
    assert parse_step_strengths("   ") is None


@pytest.mark.parametrize("text, fragment", [
    ("1,,a", "item 2 is empty"),
    ("1,a", "item 2 ('a') is not a number"),
    ("1,nan", "not finite"),
    (",", "item 1 is empty"),
])
def test_parse_errors_name_widget_and_item(text, fragment):
    with pytest.raises(ScheduleError) as info:
        parse_step_strengths(text)
    assert "step_strengths" in str(info.value) and fragment in str(info.value)


def test_window_first_two_of_eight():
    assert window_strengths(8, 0.0, 0.25) == [1, 1, 0, 0, 0, 0, 0, 0]
    assert window_strengths(8, 0.5, 1.0) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert window_strengths(4, 0.0, 1.0) == [1, 1, 1, 1]
    assert window_strengths(8, 0.3, 0.3) == [0] * 8


@pytest.mark.parametrize("args, fragment", [
    ((0, 0.0, 1.0), "expected at least 1"),
    ((-3, 0.0, 1.0), "expected at least 1"),
    ((8, 0.6, 0.2), "start_percent (0.6) is after end_percent (0.2)"),
    ((8, -0.1, 0.5), "start_percent is -0.1"),
    ((8, 0.0, 1.5), "end_percent is 1.5"),
])
def test_window_errors(args, fragment):
    with pytest.raises(ScheduleError) as info:
        window_strengths(*args)
    assert fragment in str(info.value)


def test_short_list_holds_last_value_and_says_so():
    schedule = resolve(8, [1.0, 0.5])
    assert schedule.multipliers == (1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5)
    assert "hold the last value 0.5" in schedule.notes[0]
    longer = resolve(4, [1, 1, 0, 0, 0, 0])
    assert longer.multipliers == (1, 1, 0, 0) and "unused" in longer.notes[0]
    assert resolve(8, None, 0.0, 0.25).multipliers == (1, 1, 0, 0, 0, 0, 0, 0)


def test_step_of_schedule_sigmas_euler():
    sigmas = flow_simple(8)
    assert [step_of_sigma(s, sigmas) for s in sigmas[:-1]] == list(range(8))
    assert step_of_sigma(sigmas[0] + 0.5, sigmas) == 0


def test_step_of_intermediate_sigmas_heun_dpm2():
    sigmas = flow_simple(8)
    # DPM-2 evaluates at the geometric mean of two schedule sigmas: inside interval i
    for i in range(7):
        mid = (sigmas[i] * sigmas[i + 1]) ** 0.5
        assert step_of_sigma(mid, sigmas) == i
    # the last interval ends at 0: anything in (0, sigmas[7]) is the last step
    assert step_of_sigma(sigmas[7] / 2, sigmas) == 7
    assert step_of_sigma(0.0, sigmas) == 7


def test_step_of_repeated_sigmas_and_tensor_input():
    sigmas = torch.tensor([1.0, 0.8, 0.8, 0.5, 0.2, 0.0])
    assert step_of_sigma(0.8, sigmas) == 1
    assert step_of_sigma(0.65, sigmas) == 2  # between the repeat's end (index 2) and 0.5
    assert step_of_sigma(0.5, sigmas) == 3
    assert step_of_sigma(0.1, sigmas) == 4


def test_step_of_karras_like_schedule_many_steps():
    sigmas = [14.6 * (0.8 ** i) for i in range(20)] + [0.0]
    assert [step_of_sigma(s, sigmas) for s in sigmas[:-1]] == list(range(20))
    assert step_of_sigma((sigmas[5] + sigmas[6]) / 2, sigmas) == 5


class _Delta:
    """A stand-in adapter module: a fixed delta, whatever dtype/device is asked."""

    def __init__(self, value: torch.Tensor):
        self.value = value

    def delta(self, shape, dtype=torch.float32, device=None):
        assert tuple(shape) == tuple(self.value.shape)
        return self.value.to(dtype)


def test_scheduled_weight_adds_per_region_and_never_touches_the_weight():
    from sda_core.step_strengths import ScheduledWeight, StepStrength

    weight = torch.randn(6, 4)
    kept = weight.clone()
    q, v = torch.randn(2, 4), torch.randn(2, 4)
    state = StepStrength(0.5, lambda steps: resolve(steps, [1.0, 0.0]))
    wrapper = ScheduledWeight([((0, 2), _Delta(q)), ((4, 2), _Delta(v))], state)
    sigmas = [1.0, 0.6, 0.3, 0.0]
    assert state.update(1.0, sigmas) == 0.5
    out = wrapper(weight)
    assert torch.equal(weight, kept)
    torch.testing.assert_close(out[0:2], kept[0:2] + 0.5 * q)
    assert torch.equal(out[2:4], kept[2:4])
    torch.testing.assert_close(out[4:6], kept[4:6] + 0.5 * v)
    assert state.update(0.6, sigmas) == 0.0
    assert wrapper(weight) is weight
    assert state.steps_seen == {0: 0.5, 1: 0.0}


@pytest.mark.parametrize("text, item, value", [("1,2.5", 2, "2.5"), ("-3", 1, "-3"), ("1,1,1e9", 3, "1e+09")])
def test_step_strength_beyond_the_widget_range_is_refused_naming_the_item(text, item, value):
    with pytest.raises(ScheduleError) as info:
        parse_step_strengths(text)
    assert str(info.value) == (f"step_strengths: item {item}: strength {value} is outside −2…2, the range of the "
                               "strength widgets; expected a multiplier from −2 to 2")
    assert parse_step_strengths("2,-2,0") == [2.0, -2.0, 0.0]
