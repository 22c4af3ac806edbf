"""The memory plan's arithmetic and its refusal: which parts count, what each option changes, what the error
says. (Its agreement with measured peaks is tests/integration/test_memory_plan.py.)"""
import dataclasses
import re

import pytest

from sda_core.training.lokr import LoKrSet
from sda_core.training.memory_plan import (LOKR_STATE_BYTES, RunDoesNotFit, RunFacts, check_fits, estimate, gib,
                                           lokr_param_count, options_that_fit, zimage_profile)

GB = 2**30


def full_size(**changes) -> RunFacts:
    """Z-Image at 1024² in bf16 with a separate bf16 teacher, fused attention (a GPU), no checkpointing."""
    params = 6_150_000_000
    facts = RunFacts(
        student_bytes=2 * params, teacher_bytes=2 * params, teacher_params=params, teacher="resident",
        teacher_extra_bytes=0, lokr_params=83_000_000, adapted_elements=5_900_000_000,
        largest_adapted=10240 * 3840, block_adapted=196_608_000, image_tokens=4096, text_tokens=128,
        trained_blocks=(30, 0, 0), profile=zimage_profile(3840, 10240, 30, 2, attention_scores=False),
        batch=1, teacher_cfg=False, teacher_batch=1, grad_rows=2, gradient_checkpointing=False,
        latent_elements=16 * 128 * 128)
    return dataclasses.replace(facts, **changes)


def test_lokr_param_count_is_the_parameter_count_of_the_lokrs_the_trainer_builds():
    shapes = {"a": (3840, 3840), "b": (10240, 3840), "c": (96, 32)}
    for rank in (None, 4):
        built = LoKrSet.build(shapes, factor=8, rank=rank)
        assert lokr_param_count(list(shapes.values()), 8, rank) == sum(p.numel() for p in built.parameters())


def test_the_peak_is_the_largest_phase_with_the_weights_resident_then_and_the_lokr_state():
    plan = estimate(full_size())
    lokr = LOKR_STATE_BYTES * 83_000_000
    assert plan.lokr_state == lokr
    both = 4 * 6_150_000_000
    assert plan.phases["grad forward and backward"] == lokr + both + plan.grad
    assert plan.phases["teacher forward"] == lokr + both + plan.teacher_forward
    assert plan.peak == max(plan.phases.values())
    assert plan.peak_phase == "grad forward and backward"


def test_a_swapped_teacher_holds_one_model_at_a_time_and_a_shared_one_only_its_patches():
    resident = estimate(full_size())
    swapped = estimate(full_size(teacher="swapped"))
    shared = estimate(full_size(teacher="shared", teacher_extra_bytes=300 * 2**20))
    assert resident.peak - swapped.peak == 2 * 6_150_000_000
    assert swapped.phases["teacher forward"] == swapped.lokr_state + 2 * 6_150_000_000 + swapped.teacher_forward
    assert resident.peak - shared.peak == 2 * 6_150_000_000 - 300 * 2**20
    assert shared.teacher_weights == 0


def test_checkpointing_keeps_one_block_of_activations_and_patched_weights_instead_of_all():
    off, on = estimate(full_size()), estimate(full_size(gradient_checkpointing=True))
    assert on.rollout == off.rollout and on.teacher_forward == off.teacher_forward
    # without checkpointing the grad forward keeps the fp32 cast of every adapted bf16 weight (4 bytes each)
    assert off.grad > 5_900_000_000 * 4 > on.grad
    assert off.grad / on.grad > 5


def test_the_grad_forward_grows_with_rows_and_tokens_and_materialised_attention_scores():
    base = estimate(full_size()).grad
    assert estimate(full_size(grad_rows=1)).grad < base
    assert estimate(full_size(image_tokens=1024)).grad < base
    scores = full_size(profile=zimage_profile(3840, 10240, 30, 2, attention_scores=True))
    # L² scores per head and row, 30 blocks: 30 · 2 rows · 30 heads · 4224² · 4 bytes (the clone computes in fp32)
    assert estimate(scores).grad - base == pytest.approx(30 * 2 * 30 * 4224**2 * 4, rel=1e-9)


def test_teacher_rows_double_with_cfg_and_multiply_with_teacher_batch():
    assert full_size().teacher_rows == 2
    assert full_size(teacher_cfg=True, teacher_batch=4).teacher_rows == 16
    assert estimate(full_size(teacher_batch=4)).teacher_forward > estimate(full_size()).teacher_forward


def test_a_run_that_fits_passes_the_check():
    plan = estimate(full_size(gradient_checkpointing=True, teacher="shared"))
    check_fits(plan, plan.peak, "cuda:0")


def test_a_run_that_does_not_fit_is_refused_with_the_options_that_fit_and_their_numbers():
    facts = full_size(teacher="swapped")
    plan = estimate(facts)
    budget = 75 * GB
    assert plan.peak > budget
    sizes = [("896x896", 3136, 16 * 112 * 112), ("768x768", 2304, 16 * 96 * 96), ("512x512", 1024, 16 * 64 * 64)]
    with pytest.raises(RunDoesNotFit) as err:
        check_fits(plan, budget, "cuda:0", sizes)
    message = str(err.value)
    assert f"needs about {gib(plan.peak)} on cuda:0" in message and f"{gib(budget)} is available" in message
    listed = dict(re.findall(r"\(\d\) ([^:]+): ([\d.]+ [GM]iB)\.", message.split(" The plan: ")[0]))
    expected = {o.what: gib(o.peak) for o in options_that_fit(facts, budget, sizes)}
    assert listed == expected and expected
    assert len(listed) >= 2
    for what, change in [("gradient_checkpointing on", dict(gradient_checkpointing=True)),
                         ("a smaller size, 512x512", dict(image_tokens=1024, latent_elements=16 * 64 * 64)),
                         ("the teacher in fp8", dict(teacher_bytes=6_150_000_000))]:
        peak = estimate(dataclasses.replace(facts, **change)).peak
        named = [k for k in listed if k.startswith(what)]
        if peak <= budget:
            assert named and listed[named[0]] == gib(peak)
        else:
            assert not named, f"{what} does not fit ({gib(peak)}) and must not be offered"
    # each offered option does fit
    for o in options_that_fit(facts, budget, sizes):
        assert o.peak <= budget


def test_the_largest_smaller_size_that_fits_is_offered():
    facts = full_size(gradient_checkpointing=True, teacher="shared")
    sizes = [("896x896", 3136, 16 * 112 * 112), ("512x512", 1024, 16 * 64 * 64), ("256x256", 256, 16 * 32 * 32)]
    at_512 = estimate(dataclasses.replace(facts, image_tokens=1024, latent_elements=16 * 64 * 64)).peak
    options = options_that_fit(facts, at_512, sizes)
    assert [o.what for o in options] == ["a smaller size, 512x512"] and options[0].peak == at_512


def test_when_no_single_option_fits_they_are_offered_together_or_the_error_says_none_fits():
    facts = full_size()
    together = estimate(full_size(gradient_checkpointing=True, teacher="shared")).peak
    singles = [estimate(full_size(gradient_checkpointing=True)).peak, estimate(full_size(teacher="shared")).peak]
    assert together < min(singles)
    options = options_that_fit(facts, together)
    assert [o.what.split(" (")[0] for o in options] == [
        "together: gradient_checkpointing on + a teacher that shares the student's weights"]
    with pytest.raises(RunDoesNotFit, match="Options that fit: none of gradient checkpointing"):
        check_fits(estimate(facts), 2 * GB, "cuda:0")


def test_the_plan_prints_its_parts():
    plan = estimate(full_size(gradient_checkpointing=True))
    text = "\n".join(plan.lines(24 * GB, "cuda:0"))
    assert f"memory plan: peak {gib(plan.peak)} on cuda:0 of 24.00 GiB available" in text
    assert "student 11.46 GiB, teacher 11.46 GiB beside it" in text
    assert "83,000,000 parameters" in text and "(checkpointing on)" in text
    assert "teacher forward of 2 rows" in text


def test_unknown_teacher_modes_are_refused():
    with pytest.raises(ValueError, match="teacher must be one of"):
        full_size(teacher="offloaded")
