"""Adapter strength by sampling step: the adapter rides on the model as weight wrappers whose strength is set
from the current sigma before every model call, so it is on exactly in the steps the user chose and gone when
sampling ends (ComfyUI removes weight wrappers with the patcher that carries them)."""
from __future__ import annotations

import inspect
import uuid

import comfy.patcher_extension
from comfy_api.latest import io, ui

from ..sda_core.step_strengths import StepStrength, parse_step_strengths, resolve, window_strengths
from ..sda_core.stack import MAX_STRENGTH
from . import host

CATEGORY = "SDA"
REPORT_STEPS = 8


def _transformer_options(executor, x, t, args, kwargs) -> dict:
    """The call's transformer_options, found by parameter name in the wrapped apply_model's signature."""
    if "transformer_options" in kwargs:
        return kwargs["transformer_options"] or {}
    try:
        bound = inspect.signature(executor.original).bind_partial(x, t, *args, **kwargs)
    except (AttributeError, TypeError, ValueError):
        return {}
    return bound.arguments.get("transformer_options") or {}


def _apply_model_wrapper(state: StepStrength):
    def wrapper(executor, x, t, *args, **kwargs):
        options = _transformer_options(executor, x, t, args, kwargs)
        state.update(float(t.flatten()[0]), options.get("sample_sigmas"))
        return executor(x, t, *args, **kwargs)

    return wrapper


class SDAScheduledAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDAScheduledAdapter",
            display_name="SDA Adapter Strength by Step",
            category=CATEGORY,
            description=("Apply an adapter with a strength per sampling step (e.g. the SDA LoKr on the first, "
                         "composition-setting steps only). Adds on top of any adapters the model already carries."),
            inputs=[
                io.Model.Input("model", tooltip=("The model to carry the adapter; it may already carry others. It is "
                                                 "cloned: the input MODEL itself is never changed.")),
                host.adapter_file_input("lora_name", extra="Usually the SDA LoKr, on the early steps."),
                io.Float.Input("strength", default=1.0, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.01,
                               tooltip=(f"Overall multiplier (−{MAX_STRENGTH:g} to {MAX_STRENGTH:g}), times the "
                                        "step's value; 1 is the strength the adapter was trained at.")),
                io.String.Input("step_strengths", default="",
                                tooltip=("A multiplier per sampling step, e.g. 1,1,1,0.5,0,0,0,0, each from "
                                         f"−{MAX_STRENGTH:g} to {MAX_STRENGTH:g}. Empty: use the window below. A "
                                         "shorter list holds its last value.")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip=("With step_strengths empty: the fraction of the steps where the adapter "
                                        "turns on; it is on for steps i with start ≤ i/steps < end (0 = from the "
                                        "first step).")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip=("With step_strengths empty: the fraction of the steps where the adapter "
                                        "turns off (1 = on to the last step; 0.25 of 8 steps = the first 2).")),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL",
                                tooltip=("The model carrying the adapter as weight wrappers switched per step while "
                                         "sampling; the stored weights are never changed.")),
                io.String.Output(display_name="report",
                                 tooltip=("The strength per step for an example step count, how other step counts "
                                          "are treated, and the file's report.")),
            ],
        )

    @classmethod
    def execute(cls, model, lora_name: str, strength: float, step_strengths: str, start_percent: float,
                end_percent: float) -> io.NodeOutput:
        values = parse_step_strengths(step_strengths)
        if values is None:
            window_strengths(REPORT_STEPS, start_percent, end_percent)  # refuses a bad window now, not mid-sampling
        loaded = host.load_for_model(model, lora_name, widget="lora_name")

        def schedule_for(steps: int):
            return resolve(steps, values, start_percent, end_percent)

        state = StepStrength(strength, schedule_for)
        patched = model.clone()
        host.add_switched_weights(patched, loaded, state)
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL,
                                     f"sda_scheduled_{uuid.uuid4().hex}", _apply_model_wrapper(state))
        example = schedule_for(max(REPORT_STEPS, len(values or [])))
        per_step = ", ".join(f"{k}: {strength * m:g}" for k, m in enumerate(example.multipliers))
        report = host.join_lines([
            f"strength {strength:g} × schedule; for {len(example.multipliers)} steps → {per_step}",
            *example.notes,
            "other step counts: the same list (a short list holds its last value) or the same window",
            loaded.report(),
        ])
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


NODES = [SDAScheduledAdapter]
