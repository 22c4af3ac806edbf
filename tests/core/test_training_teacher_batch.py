"""teacher_batch K: the teacher runs once per K steps on x_t rolled out with the LoKr of the batch's start, and a
run stopped inside a batch resumes the same curve. K = 1 is the per-step path."""
from __future__ import annotations

import dataclasses

import torch

from sda_core.training import load_checkpoint, train
from sda_core.training.loss import uses_diversity
from sda_core.training.loop import draw_step
from sdatest.toy_training import toy_problem


class Counted:
    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def __call__(self, x, sigma, cond):
        self.calls += 1
        return self.fn(x, sigma, cond)


def _problem(steps: int, k: int, batch: int = 1):
    tp = toy_problem(steps=steps, teacher_batch=k, batch=batch)
    teacher = Counted(tp.models.teacher)
    tp.models = dataclasses.replace(tp.models, teacher=teacher)
    return tp, teacher


def test_the_teacher_runs_once_per_batch_of_k_steps_that_uses_it():
    tp, teacher = _problem(steps=10, k=4, batch=2)
    train(tp.models, tp.config)
    used = [any(uses_diversity(draw_step(tp.config, s, 2).k, tp.config.div_skip) for s in batch)
            for batch in (range(0, 4), range(4, 8), range(8, 10))]
    assert teacher.calls == sum(used) and teacher.calls >= 2

    per_step, calls = _problem(steps=10, k=1, batch=2)
    train(per_step.models, per_step.config)
    assert calls.calls == sum(uses_diversity(draw_step(tp.config, s, 2).k, tp.config.div_skip) for s in range(10))


def test_k_greater_than_one_trains_on_targets_made_at_the_batch_start():
    """Step 1 of a batch equals the per-step run (nothing updated yet); later steps use older x_t: they differ."""
    a, _ = _problem(steps=4, k=4)
    b, _ = _problem(steps=4, k=1)
    ra, rb = train(a.models, a.config), train(b.models, b.config)
    assert ra.history[0] == rb.history[0]
    assert [h["k"] for h in ra.history] == [h["k"] for h in rb.history]
    assert ra.history[1:] != rb.history[1:]


def test_a_run_stopped_inside_a_batch_resumes_the_same_curve(tmp_path):
    full, _ = _problem(steps=10, k=4)
    r_full = train(full.models, full.config)

    first, _ = _problem(steps=10, k=4)
    path = str(tmp_path / "run.ckpt.safetensors")
    seen: list[int] = []
    r1 = train(first.models, first.config, should_stop=lambda: len(seen) >= 5, on_step=lambda s, e: seen.append(s),
               checkpoint_path=path)
    assert r1.interrupted and r1.steps == 5
    ckpt = load_checkpoint(path)
    assert {key.split(".")[0] for key in ckpt.pending} == {"5", "6", "7"}  # the rest of the batch 4..7, as made

    resumed, _ = _problem(steps=10, k=4)
    r2 = train(resumed.models, resumed.config, resume=ckpt, checkpoint_path=path)
    assert r2.history == r_full.history
    for (n, p), (_, q) in zip(full.models.lokr.named_tensors().items(), resumed.models.lokr.named_tensors().items()):
        assert torch.equal(p, q), n
    assert load_checkpoint(path).pending == {}  # the end of a run leaves nothing pending
