"""Adapter nodes: load the SDA LoKr, stack it with style and distillation-patch LoRAs, invert a training adapter."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..sda_core.stack import MAX_STRENGTH, inversion_deviation, normalize_lora_stack, overlap_report
from . import host

CATEGORY = "SDA"
STACK_ROWS = 4
NONE = "None"
LoraStack = io.Custom("LORA_STACK")


def _strength(id: str, default: float = 1.0, tooltip: str | None = None) -> io.Float.Input:
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
                io.Model.Input("model"),
                io.Combo.Input("lokr_name", options=host.lora_names(), tooltip="A file in models/loras."),
                _strength("strength", tooltip="Multiplier of the adapter; 0 gives the input model back."),
            ],
            outputs=[io.Model.Output(display_name="MODEL"), io.String.Output(display_name="report")],
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
                io.Boolean.Input(f"enabled_{i}", default=True, label_on="on", label_off="off"),
                io.Combo.Input(f"lora_{i}", options=[NONE] + host.lora_names(), default=NONE),
                _strength(f"strength_{i}"),
            ]
        return io.Schema(
            node_id="SDAAdapterStack",
            display_name="SDA Adapter Stack",
            category=CATEGORY,
            description=("Apply an ordered stack to one model: an incoming LORA_STACK first, then rows 1 to 4 "
                         "(SDA LoKr, style LoRAs, DistillPatch...). Chain stacks for more rows."),
            inputs=[io.Model.Input("model"), LoraStack.Input("lora_stack", optional=True), *rows],
            outputs=[
                io.Model.Output(display_name="MODEL"),
                LoraStack.Output(display_name="LORA_STACK"),
                io.String.Output(display_name="report"),
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
            display_name="Invert Training Adapter",
            category=CATEGORY,
            description=("Apply a de-distill training adapter at −strength, cancelling it where it is merged in: "
                         "base + adapter + yours − adapter = base + yours."),
            inputs=[
                io.Model.Input("model"),
                io.Combo.Input("adapter_name", options=host.lora_names(), tooltip="The training adapter in models/loras."),
                io.Float.Input("strength", default=1.0, min=0.0, max=2.0, step=0.01,
                               tooltip="The strength it was merged at; it is applied at −strength."),
                io.Boolean.Input("verify", default=True,
                                 tooltip="Check on the model's weights that +strength then −strength restores them."),
            ],
            outputs=[io.Model.Output(display_name="MODEL"), io.String.Output(display_name="report")],
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
