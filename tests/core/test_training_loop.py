"""The loop end to end: the toy's known answer, exact resume, skipped/diverged steps, interrupt."""
import dataclasses
import json
import math
import os

import pytest
import torch
from safetensors import safe_open

from sda_core.training import (
    Checkpoint, TeacherNotFinite, TrainingDiverged, alignment, load_checkpoint, save_checkpoint, train,
)
from sda_core.training.loop import TrainingFault, draw_step, make_optimizer, step_seed, train_step
from sda_core.training.trajectory import flow_sigmas, rollout
from sdatest.toy_training import tiny_dit_problem, toy_problem


pytestmark = pytest.mark.usefixtures("one_thread")


def _lokr_tensors(tp):
    return {n: p.detach().clone() for n, p in tp.models.lokr.named_tensors().items()}


def test_sda_aligns_the_collapsed_students_seed_deltas_with_the_teachers():
    # toy_problem: teacher x0 = image + M·lowfreq(x_t); student x0 = image + W·x_t with W tiny and random.
    # The known answer: W turns towards M (cosine of low-passed seed deltas -> 1). lr 3e-2 is high enough
    # that without the anchor the magnitude drifts (see the next test).
    tp = toy_problem(steps=200)
    before = alignment(tp.models, tp.config, n_pairs=8)
    result = train(tp.models, tp.config)
    after = alignment(tp.models, tp.config, n_pairs=8)
    assert result.steps == 200 and not result.interrupted and result.bad_steps == 0
    assert abs(before["cos"]) < 0.2, before
    assert after["cos"] > 0.5, after
    assert abs(after["std"] / before["std"] - 1) < 0.10, (before, after)  # the anchor keeps the magnitude
    assert abs(after["mean_abs"] / before["mean_abs"] - 1) < 0.10
    ks = [h["k"] for h in result.history]
    assert set(ks) == set(range(8))  # k uniform over the schedule
    assert all((h["diversity"] is None) == (h["k"] >= 7) for h in result.history)


def test_without_the_anchor_the_magnitude_drifts(monkeypatch):
    import sda_core.training.step as step_mod

    real = step_mod.L.anchor_loss
    monkeypatch.setattr(step_mod.L, "anchor_loss", lambda a, b, d=0.08: 0.0 * real(a, b, d))
    tp = toy_problem(steps=200)
    before = alignment(tp.models, tp.config, n_pairs=8)
    train(tp.models, tp.config)
    after = alignment(tp.models, tp.config, n_pairs=8)
    assert after["cos"] > 0.5 and after["std"] / before["std"] > 1.2  # the control the check above needs


def test_draws_are_per_step_and_reproducible():
    cfg = toy_problem().config
    a, b = draw_step(cfg, 5, 3), draw_step(cfg, 5, 3)
    assert a.seeds == b.seeds and a.k == b.k and torch.equal(a.z1, b.z1) and torch.equal(a.z2, b.z2)
    assert not torch.equal(a.z1, a.z2)
    assert draw_step(cfg, 6, 3).seeds != a.seeds
    torch.manual_seed(0)
    c = draw_step(cfg, 5, 3)  # the global RNG plays no part
    assert c.seeds == a.seeds
    assert step_seed(0, 1) != step_seed(1, 0)


def test_only_a_diversity_step_rolls_z2_out():
    tp = toy_problem()
    cfg = tp.config
    rows = []

    def student(x, sigma, cond):
        rows.append((torch.is_grad_enabled(), x.shape[0]))
        return tp.student(x, sigma, cond)

    models = dataclasses.replace(tp.models, student=student)
    params = list(models.lokr.parameters())
    opt = make_optimizer(params, cfg)
    sigmas = flow_sigmas(cfg.student_steps, cfg.shift)
    for k, rollout_rows in ((cfg.div_skip, cfg.batch), (3, 2 * cfg.batch)):
        draw = draw_step(cfg, 0, len(models.conds))
        draw.k = k
        rows.clear()
        terms, ok = train_step(models, cfg, draw, sigmas, opt, params)
        assert ok and (terms.diversity is None) == (k >= cfg.div_skip)
        assert rows[:k] == [(False, rollout_rows)] * k  # the no-grad rollout, z2 only when the loss reads it


class GlobalNoise:
    """A student that also draws from torch's global RNG (like dropout would)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x, sigma, cond):
        return self.fn(x, sigma, cond) * (1 + 1e-3 * torch.randn(()))


def _dit(steps):
    tp = tiny_dit_problem(steps=steps, dim=32)
    tp.models = dataclasses.replace(tp.models, student=GlobalNoise(tp.student))
    return tp


def test_resume_continues_bit_for_bit(tmp_path):
    torch.manual_seed(0)
    full = _dit(6)
    r_full = train(full.models, full.config)

    torch.manual_seed(0)
    first = _dit(6)
    ckpt_path = str(tmp_path / "run.ckpt.safetensors")
    seen = []
    r1 = train(first.models, first.config, should_stop=lambda: len(seen) >= 3,
               on_step=lambda s, e: seen.append(s), checkpoint_path=ckpt_path)
    assert r1.interrupted and r1.steps == 3 and r1.checkpoint_path == ckpt_path and seen == [1, 2, 3]

    torch.manual_seed(123)  # a fresh process: the checkpoint's RNG state must take over
    resumed = _dit(6)
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.step == 3 and len(ckpt.history) == 3
    r2 = train(resumed.models, resumed.config, resume=ckpt)
    assert r2.steps == 6 and r2.resumed_from == 3
    assert r2.history == r_full.history
    a, b = _lokr_tensors(full), _lokr_tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    assert any(h["diversity"] is not None for h in r_full.history)


def test_checkpoint_is_safetensors_with_json_metadata_no_pickle(tmp_path):
    tp = toy_problem(steps=2)
    path = str(tmp_path / "c.safetensors")
    train(tp.models, tp.config, checkpoint_path=path)
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    meta = header["__metadata__"]
    assert meta["step"] == "2" and json.loads(meta["config"])["huber_delta"] == 0.08
    assert len(json.loads(meta["history"])) == 2
    with safe_open(path, "pt") as f:
        keys = set(f.keys())
    assert {"lokr.mix.w1", "lokr.mix.w2", "rng.torch_cpu", "optim.0.exp_avg", "optim.1.exp_avg_sq"} <= keys
    assert [p for p in os.listdir(tmp_path) if p != "c.safetensors"] == []  # no temp file left


def test_checkpoints_carry_the_callers_extra_state(tmp_path):
    tp = toy_problem(steps=3)
    path = str(tmp_path / "c.safetensors")
    seen: list[int] = []
    train(tp.models, tp.config, checkpoint_path=path, on_step=lambda s, e: seen.append(s),
          checkpoint_extra=lambda: {"evals": list(seen)})
    assert load_checkpoint(path).extra == {"evals": [1, 2, 3]}  # read when the checkpoint is written


def test_checkpoint_refuses_another_lokr_layout(tmp_path):
    tp = toy_problem(steps=1)
    path = str(tmp_path / "c.safetensors")
    train(tp.models, tp.config, checkpoint_path=path)
    other = toy_problem(rank=2)
    with pytest.raises(ValueError, match="does not match"):
        load_checkpoint(path).restore(other.models.lokr)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an SDA training checkpoint"):
        load_checkpoint(str(tmp_path / "plain.safetensors"))


class Poison:
    """A student that returns NaN while `on` is set."""

    def __init__(self, fn):
        self.fn, self.on = fn, False

    def __call__(self, x, sigma, cond):
        out = self.fn(x, sigma, cond)
        return out * float("nan") if self.on else out


def test_nan_steps_are_skipped_and_counted():
    tp = toy_problem(steps=8)
    poison = Poison(tp.student)
    tp.models = dataclasses.replace(tp.models, student=poison)
    snapshots = {}

    def on_step(step, entry):
        snapshots[step] = _lokr_tensors(tp)
        poison.on = step in (3, 4)  # steps 4 and 5 see NaN

    r = train(tp.models, tp.config, on_step=on_step)
    assert r.bad_steps == 2 and r.steps == 8
    assert [h["skipped"] for h in r.history] == [False] * 3 + [True, True] + [False] * 3
    assert r.history[3]["total"] is None
    for step in (4, 5):  # no optimiser step while skipping
        assert all(torch.equal(snapshots[step][n], snapshots[3][n]) for n in snapshots[3])
    assert not torch.equal(snapshots[6]["mix.w2"], snapshots[5]["mix.w2"])


def test_repeated_nan_raises_diverged_with_last_good_weights():
    clean = toy_problem(steps=3)
    train(clean.models, clean.config)
    tp = toy_problem(steps=20, max_bad_steps=3)
    poison = Poison(tp.student)
    tp.models = dataclasses.replace(tp.models, student=poison)

    def on_step(step, entry):
        poison.on = step >= 3

    with pytest.raises(TrainingDiverged, match="3 steps with a non-finite") as info:
        train(tp.models, tp.config, on_step=on_step)
    assert info.value.last_good_step == 3 and info.value.step == 6
    a, b = _lokr_tensors(clean), _lokr_tensors(tp)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_interrupt_saves_and_periodic_checkpoints(tmp_path, monkeypatch):
    import sda_core.training.loop as loop

    tp = toy_problem(steps=10, checkpoint_every=4)
    path = str(tmp_path / "c.safetensors")
    steps_at_save = []

    def spy(p, ckpt):
        steps_at_save.append(ckpt.step)
        return save_checkpoint(p, ckpt)

    monkeypatch.setattr(loop, "save_checkpoint", spy)
    r = train(tp.models, tp.config, checkpoint_path=path, should_stop=lambda: len(steps_at_save) == 2)
    assert steps_at_save == [4, 8, 8] and r.interrupted and r.steps == 8
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt, Checkpoint) and ckpt.step == 8 and len(ckpt.history) == 8


def test_an_update_that_overflows_the_weights_is_undone(monkeypatch):
    class Overflowing(torch.optim.AdamW):
        calls = 0

        def step(self, closure=None):
            super().step(closure)
            Overflowing.calls += 1
            if Overflowing.calls > 2:  # from the third update on, the weights overflow
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] = float("inf")

    monkeypatch.setattr(torch.optim, "AdamW", Overflowing)
    clean = toy_problem(steps=2)
    train(clean.models, clean.config)
    Overflowing.calls = 0
    tp = toy_problem(steps=10, max_bad_steps=2)
    with pytest.raises(TrainingDiverged) as info:
        train(tp.models, tp.config)
    assert info.value.last_good_step == 2 and info.value.step == 4
    a, b = _lokr_tensors(clean), _lokr_tensors(tp)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_nan_teacher_stops_the_run_naming_it_although_pure_anchor_steps_succeed_between():
    """Every diversity step is skipped (NaN targets); the pure-anchor steps (k = 7) between them train fine and
    must not hide the broken teacher by resetting the count."""
    tp = toy_problem(steps=40, max_bad_steps=4, div_skip=4)  # k >= 4: pure anchor, about half the steps
    poison = Poison(tp.teacher)
    poison.on = True
    tp.models = dataclasses.replace(tp.models, teacher=poison)
    seen = []
    with pytest.raises(TeacherNotFinite, match="teacher's predictions were non-finite .* 4 steps in a row") as info:
        train(tp.models, tp.config, on_step=lambda step, entry: seen.append(entry))
    kinds = ["anchor" if h["k"] >= 4 else "div" for h in seen]
    assert any(a == "div" and b == "anchor" for a, b in zip(kinds, kinds[1:])), kinds  # the old code reset here
    assert all(h["skipped"] == (h["k"] < 4) for h in seen)  # the anchor steps did train
    assert sum(k == "div" for k in kinds) == 3 and info.value.step == len(seen) + 1


def test_pure_anchor_successes_do_not_reset_the_count_of_skipped_diversity_steps():
    tp = toy_problem(steps=40, max_bad_steps=4, div_skip=4)  # seed 0 draws k = 0, 1, 2, 7, 1, ...
    poison = Poison(tp.student)
    tp.models = dataclasses.replace(tp.models, student=poison)
    real = draw_step

    def poisoned_when_diverse(config, step, n):
        d = real(config, step, n)
        poison.on = d.k < 4
        return d

    import sda_core.training.loop as loop

    with pytest.MonkeyPatch.context() as m:
        m.setattr(loop, "draw_step", poisoned_when_diverse)
        with pytest.raises(TrainingDiverged, match="4 steps with a non-finite") as info:
            train(tp.models, tp.config)
    ks = [real(tp.config, s, 1).k for s in range(info.value.step)]
    assert ks == [0, 1, 2, 7, 1] and info.value.last_good_step == 4  # the good anchor step 4 reset nothing


def test_an_undone_update_restores_adamws_moments_and_step_count_with_the_weights(monkeypatch):
    """After an overflowing update is undone, the next good update is the one a run without it would make."""
    class OverflowOnce(torch.optim.AdamW):
        calls = 0

        def step(self, closure=None):
            super().step(closure)
            OverflowOnce.calls += 1
            if OverflowOnce.calls == 3:  # the third update overflows the weights
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] = float("inf")

    import sda_core.training.loop as loop

    tp = toy_problem(steps=4)
    seen = {}
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", OverflowOnce)
    monkeypatch.setattr(loop, "draw_step", lambda config, step, n: draw_step(config, min(step, 1), n))
    r = train(tp.models, tp.config, on_step=lambda step, entry: seen.update({step: _lokr_tensors(tp)}))
    assert [h["skipped"] for h in r.history] == [False, False, True, False]
    assert all(torch.equal(seen[3][n], seen[2][n]) for n in seen[2])
    # reference: the same draws with no overflow: its third update must equal our fourth (state restored)
    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    ref = toy_problem(steps=3)
    train(ref.models, ref.config)
    ours, theirs = _lokr_tensors(tp), _lokr_tensors(ref)
    for n in theirs:  # the moments are rolled back by inverting AdamW's update: equal to rounding
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}"])
def test_a_damaged_checkpoint_is_a_value_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.ckpt.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_checkpoint(str(path))
    assert str(path) in str(info.value) and "not a readable SDA training checkpoint" in str(info.value)


@pytest.mark.parametrize("with_assistant_in_rollout", [False, True])
def test_x_t_is_rolled_out_with_the_assistant_off_unless_asked(monkeypatch, with_assistant_in_rollout):
    """Users sample the trained student without the training-only assistant: by default the rollout to x_t
    follows that trajectory; `rollout_with_assistant` puts the assistant back for it."""
    import sda_core.training.loop as loop

    tp = toy_problem(steps=6, with_assistant=True, rollout_with_assistant=with_assistant_in_rollout)
    states = []

    def rollout_spy(denoise, zs, sigmas, k, conds, batch_conds=None, noise_scale=None):
        def watched(x, sigma, cond):
            states.append(tp.assistant.enabled)
            return denoise(x, sigma, cond)

        return rollout(watched, zs, sigmas, k, conds, batch_conds, noise_scale)

    monkeypatch.setattr(loop, "rollout", rollout_spy)
    train(tp.models, tp.config)
    assert states and set(states) == {with_assistant_in_rollout}  # every rollout forward, not just some
    assert tp.assistant.enabled, "the assistant must be on again after the rollout"


@pytest.mark.parametrize("grad_clip, max_norm", [(1.0, 1.0), (0.25, 0.25), (0.0, math.inf)])
def test_grad_clip_is_the_max_norm_of_the_clipping_and_zero_turns_it_off(monkeypatch, grad_clip, max_norm):
    import sda_core.training.loop as loop

    seen = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, m: seen.append(m) or clip(params, m))
    tp = toy_problem(steps=2, grad_clip=grad_clip)
    train(tp.models, tp.config)
    assert seen == [max_norm, max_norm] and loop.SDAConfig().grad_clip == 1.0


def test_a_clipped_step_moves_the_factors_otherwise_than_an_unclipped_one():
    runs = {}
    for grad_clip in (0.0, 1e-4):
        tp = toy_problem(steps=3, grad_clip=grad_clip)
        train(tp.models, tp.config)
        runs[grad_clip] = _lokr_tensors(tp)
    assert not torch.equal(runs[0.0]["mix.w2"], runs[1e-4]["mix.w2"])


class Cancelled(Exception):
    """Stands in for ComfyUI's interrupt exception (sda_core never imports ComfyUI)."""


def test_an_interrupt_raised_inside_a_step_drops_that_step_and_resume_continues_the_curve(tmp_path):
    full = toy_problem(steps=6)
    reference = train(full.models, full.config)

    tp = toy_problem(steps=6)
    calls = {"n": 0}
    teacher = tp.models.teacher

    def teacher_that_gets_cancelled(x, sigma, cond):
        calls["n"] += 1
        if calls["n"] == 4:  # the teacher forward of the 4th diversity step: mid-step, after the rollout
            raise Cancelled()
        return teacher(x, sigma, cond)

    path = str(tmp_path / "c.safetensors")
    models = dataclasses.replace(tp.models, teacher=teacher_that_gets_cancelled)
    cut = train(models, tp.config, checkpoint_path=path, interrupts=(Cancelled,))
    assert cut.interrupted and cut.stopped == f"during step {cut.steps + 1}: not applied, resume redoes it"
    ckpt = load_checkpoint(path)
    assert ckpt.step == cut.steps and ckpt.history == reference.history[:cut.steps]

    again = toy_problem(steps=6)
    resumed = train(again.models, again.config, resume=ckpt)
    assert resumed.history == reference.history and not resumed.interrupted
    assert all(torch.equal(a, b) for a, b in zip(_lokr_tensors(full).values(), _lokr_tensors(again).values()))


class FailsWhenArmed:
    """A student that raises `error` at its first call after being armed (with `grad`: its first call with grad
    enabled): the device running out of memory in the middle of a step."""

    def __init__(self, fn, error: BaseException, grad: bool):
        self.fn, self.error, self.grad, self.armed = fn, error, grad, False

    def __call__(self, x, sigma, cond):
        if self.armed and (torch.is_grad_enabled() or not self.grad):
            raise self.error
        return self.fn(x, sigma, cond)


@pytest.mark.parametrize("where", ["a no-grad forward", "the grad forward", "the optimizer step"])
def test_an_error_inside_a_step_keeps_the_last_complete_step_and_resume_continues_the_curve(tmp_path, monkeypatch,
                                                                                          where):
    torch.manual_seed(0)
    full = _dit(6)
    r_full = train(full.models, full.config)

    torch.manual_seed(0)
    broken = _dit(6)
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    student = FailsWhenArmed(broken.models.student, error, grad=where == "the grad forward")
    broken.models = dataclasses.replace(broken.models, student=student)
    done = []
    if where == "the optimizer step":
        real_step = torch.optim.AdamW.step

        def half_an_update_then_fail(self, *args, **kwargs):
            if len(done) == 3:  # some factors already moved: they must come back
                with torch.no_grad():
                    for p in self.param_groups[0]["params"][:2]:
                        p.add_(1.0)
                raise error
            return real_step(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.AdamW, "step", half_an_update_then_fail)

    def on_step(step, entry):
        done.append(step)
        student.armed = step == 3 and where != "the optimizer step"

    path = str(tmp_path / "run.ckpt.safetensors")
    with pytest.raises(TrainingFault) as info:
        train(broken.models, broken.config, checkpoint_path=path, on_step=on_step)
    fault = info.value
    assert fault.steps == 3 and fault.checkpoint_path == path and fault.__cause__ is error
    assert "OutOfMemoryError during step 4: CUDA out of memory" in str(fault)
    assert all(p.grad is None for p in broken.models.lokr.parameters())
    monkeypatch.undo()

    torch.manual_seed(123)
    resumed = _dit(6)
    ckpt = load_checkpoint(path)
    assert ckpt.step == 3
    live = broken.models.lokr.named_tensors()  # what the node saves as the LoKr: the checkpoint's factors
    assert ckpt.lokr.keys() == live.keys() and all(torch.equal(ckpt.lokr[n], live[n].detach()) for n in live)
    r = train(resumed.models, resumed.config, resume=ckpt)
    assert r.history == r_full.history
    a, b = _lokr_tensors(full), _lokr_tensors(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_a_checkpoint_that_cannot_be_written_ends_the_run_as_a_fault_with_the_lokr_of_that_step(tmp_path, monkeypatch):
    """Disk full at a scheduled checkpoint: the run stops there, the LoKr holds that step (the node saves it), and
    the fault says no checkpoint was written for it."""
    import sda_core.training.loop as loop

    reference = toy_problem(steps=4)
    train(reference.models, reference.config)

    tp = toy_problem(steps=8, checkpoint_every=2)
    real = loop.save_checkpoint

    def disk_full(path, ckpt):
        if ckpt.step == 4:
            raise OSError(28, "No space left on device")
        return real(path, ckpt)

    monkeypatch.setattr(loop, "save_checkpoint", disk_full)
    path = str(tmp_path / "run.ckpt.safetensors")
    with pytest.raises(TrainingFault) as info:
        train(tp.models, tp.config, checkpoint_path=path)
    fault = info.value
    assert fault.steps == 4 and fault.checkpoint_path is None
    assert "OSError writing the checkpoint after step 4: [Errno 28] No space left on device" in str(fault)
    assert load_checkpoint(path).step == 2  # the last one written
    assert all(torch.equal(a, b) for a, b in zip(_lokr_tensors(tp).values(), _lokr_tensors(reference).values()))
