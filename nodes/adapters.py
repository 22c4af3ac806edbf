"""Adapter nodes: load the SDA LoKr, stack it with style and distillation-patch LoRAs, invert a training adapter."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..sda_core.stack import MAX_STRENGTH, inversion_deviation, normalize_lora_stack, overlap_report
from . import host

CATEGORY = "SDA"
STACK_ROWS = 4
NONE = host.NONE
LoraStack = io.Custom("LORA_STACK")

CLONED = "It is cloned: the input MODEL itself is never changed."
MODEL_IN = "The diffusion model to patch. " + CLONED
STRENGTH = (f"Multiplier of the adapter's change to the weights (−{MAX_STRENGTH:g} to {MAX_STRENGTH:g}). 1 is the "
            "strength it was trained at, 0 gives the model back unchanged, negative subtracts it.")
MODEL_OUT = "The model with the adapter(s) patched in; ComfyUI applies the patches when it loads the model."
REPORT_OUT = ("What each file is (format, algorithm, rank, alpha and scale), how many layers it patched and "
              "which keys it could not place, and why.")


def _strength(id: str, default: float = 1.0, tooltip: str = STRENGTH) -> io.Float.Input:
    return io.Float.Input(id, default=default, min=-MAX_STRENGTH, max=MAX_STRENGTH, step=0.01, tooltip=tooltip)


class SDALoKrLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDALoKrLoader",
            display_name="Load SDA LoKr",
            category=CATEGORY,
            description="Patch the SDA LoKr (or any LoKr/LoRA/LoHa) onto a copy of the model and report what it placed.",
            inputs=[
                io.Model.Input("model", tooltip=MODEL_IN),
                host.adapter_file_input("lokr_name", extra="Usually the SDA LoKr."),
                _strength("strength"),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip=MODEL_OUT),
                     io.String.Output(display_name="report", tooltip=REPORT_OUT)],
        )

    @classmethod
    def execute(cls, model, lokr_name: str, strength: float) -> io.NodeOutput:
        loaded = host.load_for_model(model, lokr_name, widget="lokr_name")
        patched = host.apply_adapters(model, [(loaded, strength)])
        report = host.join_lines([f"strength: {strength:g}", loaded.report()])
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


class SDAAdapterStack(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        rows = []
        for i in range(1, STACK_ROWS + 1):
            rows += [
                io.Boolean.Input(f"enabled_{i}", default=True, label_on="on", label_off="off",
                                 tooltip=f"Row {i} on or off: off skips it and keeps its file and strength."),
                host.adapter_file_input(f"lora_{i}", number=i, none_option=True,
                                        extra=f"Row {i}: applied after the rows above it."),
                _strength(f"strength_{i}", tooltip=f"Row {i}: " + STRENGTH),
            ]
        return io.Schema(
            node_id="SDAAdapterStack",
            display_name="SDA Adapter Stack",
            category=CATEGORY,
            description=("Apply an ordered stack to one model: an incoming LORA_STACK first, then rows 1 to 4 "
                         "(SDA LoKr, style LoRAs, DistillPatch...). Chain stacks for more rows."),
            inputs=[
                io.Model.Input("model", tooltip=MODEL_IN),
                LoraStack.Input("lora_stack", optional=True,
                                tooltip=("Optional LORA_STACK from another stack node (this one, Comfyroll, "
                                         "Efficiency, …), applied first in its order. Model strengths must be within "
                                         f"±{MAX_STRENGTH:g}; clip strengths are passed on, not used (only the "
                                         "diffusion model is patched).")),
                *rows,
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip=MODEL_OUT),
                LoraStack.Output(display_name="LORA_STACK",
                                 tooltip=("The incoming stack plus the enabled rows as (file, strength, strength) "
                                          "entries: chain it into another stack or a node that takes LORA_STACK.")),
                io.String.Output(display_name="report",
                                 tooltip=("How many layers each adapter patches and shares with the others "
                                          "(shared layers receive the sum), then each file's report.")),
            ],
        )

    @classmethod
    def execute(cls, model, lora_stack=None, **rows) -> io.NodeOutput:
        stack = list(normalize_lora_stack(lora_stack))
        for i in range(1, STACK_ROWS + 1):
            name = rows.get(f"lora_{i}", NONE)
            if rows.get(f"enabled_{i}", True) and name and name != NONE:
                strength = float(rows.get(f"strength_{i}", 1.0))
                stack.append((name, strength, strength))
        entries = []
        for index, (name, strength, _clip) in enumerate(stack, start=1):
            entries.append((name, host.load_for_model(model, name, widget=f"stack entry {index} ({name})"), strength))
        patched = host.apply_adapters(model, [(loaded, strength) for _, loaded, strength in entries])
        if entries:
            report = host.join_lines([overlap_report(entries)] + [loaded.report() for _, loaded, _ in entries])
        else:
            report = "empty stack: the model passes through unchanged"
        return io.NodeOutput(patched, stack, report, ui=ui.PreviewText(report))


class SDAInvertTrainingAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SDAInvertTrainingAdapter",
            display_name="SDA Invert Training Adapter",
            category=CATEGORY,
            description=("Apply a de-distill training adapter at −strength, cancelling it where it is merged in: "
                         "base + adapter + yours − adapter = base + yours."),
            inputs=[
                io.Model.Input("model", tooltip="The model that has the training adapter merged in. " + CLONED),
                host.adapter_file_input("adapter_name", extra="The training adapter that is merged into the model."),
                io.Float.Input("strength", default=1.0, min=0.0, max=MAX_STRENGTH, step=0.01,
                               tooltip=(f"The strength it was merged at (0 to {MAX_STRENGTH:g}; 1 for a plain "
                                        "merge); it is applied at −strength.")),
                io.Boolean.Input("verify", default=True,
                                 tooltip=("Check on the model's weights that +strength then −strength restores them "
                                          "(the largest deviation goes in the report); one extra pass over the "
                                          "patched weights.")),
            ],
            outputs=[io.Model.Output(display_name="MODEL", tooltip="The model with the adapter cancelled: " + MODEL_OUT),
                     io.String.Output(display_name="report",
                                      tooltip=REPORT_OUT + " With verify on: how closely the inversion restores.")],
        )

    @classmethod
    def execute(cls, model, adapter_name: str, strength: float, verify: bool) -> io.NodeOutput:
        loaded = host.load_for_model(model, adapter_name, widget="adapter_name")
        patched = host.apply_adapters(model, [(loaded, -strength)])
        lines = [f"applied at multiplier {-strength:g}", loaded.report()]
        if verify:
            worst, where = 0.0, None
            original = host.original_weights(model)
            for target, module in loaded.placements:
                host.throw_if_interrupted()
                deviation = inversion_deviation(original(target.param), module, target.rows, strength)
                if deviation >= worst:
                    worst, where = deviation, target.param
            lines.append(f"verify: +{strength:g} then −{strength:g} restores the weights to within {worst:.3g} "
                         f"(largest absolute deviation, at {where})")
        report = host.join_lines(lines)
        return io.NodeOutput(patched, report, ui=ui.PreviewText(report))


NODES = [SDALoKrLoader, SDAAdapterStack, SDAInvertTrainingAdapter]
