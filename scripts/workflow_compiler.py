"""Flow descriptions (nodes with widget values and links BY NAME) to ComfyUI's UI-format workflow JSON.

The frontend stores a node's widget values positionally (`widgets_values`), in the order it created the
widgets: the node's widget inputs in definition order (required, then optional), plus one extra value
("fixed", "randomize", ...) right after every INT widget that carries a control_after_generate widget.
`widget_slots` states that rule once; the compiler writes by it and tests/sdatest/workflow_api.py reads by it.
Node definitions are ComfyUI's own (`node_info`, the shape of GET /object_info), so a value that does not
line up with the real inputs fails when the workflow is built, not in a user's browser.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

CONTROL = "control_after_generate"
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
VIRTUAL_TYPES = frozenset({"Note", "MarkdownNote"})  # frontend-only nodes: never sent to the server
LEGACY_SEED_NAMES = ("seed", "noise_seed")  # the frontend adds a control widget to these without being asked
FLOW_SETTINGS = frozenset({"title", "mode", "controls"})  # Flow.add keywords that are not node inputs


# --- the frontend's widget-order rule ------------------------------------------------------------------

def input_specs(node_def: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, type, options) of every non-hidden input, required then optional, in definition order."""
    out = []
    for section in ("required", "optional"):
        specs = node_def.get("input", {}).get(section, {})
        order = node_def.get("input_order", {}).get(section, list(specs))
        for name in order:
            spec = specs[name]
            kind = "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            out.append((name, kind, options))
    return out


def is_widget(kind: str, options: dict[str, Any]) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput", False)


def has_control(name: str, kind: str, options: dict[str, Any]) -> bool:
    """Whether the frontend adds a control_after_generate widget (value saved right after this one)."""
    if kind == "INT":
        return bool(options.get(CONTROL, name in LEGACY_SEED_NAMES))
    if kind == "COMBO" and options.get(CONTROL):
        raise NotImplementedError("combo with control_after_generate (the frontend adds two extra widgets)")
    return False


def widget_slots(node_def: dict[str, Any]) -> list[str]:
    """Names of the `widgets_values` positions; a control value shows as CONTROL after its widget."""
    slots = []
    for name, kind, options in input_specs(node_def):
        if is_widget(kind, options):
            slots.append(name)
            if has_control(name, kind, options):
                slots.append(CONTROL)
    return slots


def node_info(class_type: str) -> dict[str, Any]:
    """The definition GET /object_info serves for one node type (needs ComfyUI's `nodes` imported)."""
    import nodes

    cls = nodes.NODE_CLASS_MAPPINGS[class_type]
    if hasattr(cls, "GET_NODE_INFO_V1"):  # V3 node (comfy_api io.ComfyNode)
        return cls.GET_NODE_INFO_V1()
    inputs = cls.INPUT_TYPES()
    return {
        "input": inputs,
        "input_order": {section: list(specs) for section, specs in inputs.items()},
        "output": list(cls.RETURN_TYPES),
        "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        "display_name": nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
    }


def node_defs(types: Iterable[str]) -> dict[str, dict[str, Any]]:
    """ComfyUI's definitions of `types` (Notes aside); an unregistered type is an error naming it."""
    import nodes

    wanted = sorted(set(types) - VIRTUAL_TYPES)
    missing = [t for t in wanted if t not in nodes.NODE_CLASS_MAPPINGS]
    if missing:
        raise KeyError(f"node types not registered in this ComfyUI (with the pack loaded): {missing}")
    return {t: node_info(t) for t in wanted}


# --- flow descriptions ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Out:
    """A link source: output `slot` (index or output name) of the node described under `key`."""

    key: str
    slot: int | str = 0


@dataclass
class NodeSpec:
    key: str
    type: str
    values: dict[str, Any]
    title: str | None = None
    mode: int = 0
    controls: dict[str, str] = field(default_factory=dict)  # widget name -> its control_after_generate value


@dataclass
class Flow:
    """One workflow as written by hand: nodes in reading order, the Note first.

    `model_links` maps a model file name to the download the frontend offers when it is missing."""

    name: str
    note: str
    nodes: list[NodeSpec] = field(default_factory=list)
    model_links: Mapping[str, dict[str, str]] = field(default_factory=dict)

    def add(self, key: str, node_type: str, /, *, title: str | None = None, mode: int = 0,
            controls: dict[str, str] | None = None, **values: Any) -> Out:
        """Describe a node: widget values and links (Out) by input name. `title`, `mode` and `controls`
        are the node's own settings (build() refuses a node type with inputs of those names)."""
        if any(n.key == key for n in self.nodes):
            raise ValueError(f"{self.name}: duplicate node key {key!r}")
        self.nodes.append(NodeSpec(key, node_type, values, title, mode, dict(controls or {})))
        return Out(key)

    @property
    def types(self) -> set[str]:
        return {n.type for n in self.nodes} | {"MarkdownNote"}


# --- UI-format JSON ------------------------------------------------------------------------------------

def _output_index(defn: dict[str, Any], slot: int | str) -> int:
    if isinstance(slot, int):
        return slot
    return list(defn["output_name"]).index(slot)


def _value(spec: NodeSpec, name: str, options: dict[str, Any]) -> Any:
    if name in spec.values:
        return spec.values[name]
    if "default" in options:
        return options["default"]
    raise ValueError(f"{spec.key} ({spec.type}): no value for widget {name!r} and no default")


def _depths(flow: Flow) -> dict[str, int]:
    """Column of each node: one right of its furthest input (left-to-right reading order)."""
    depth: dict[str, int] = {}
    for n in flow.nodes:  # nodes are described after their inputs
        sources = [v.key for v in n.values.values() if isinstance(v, Out)]
        missing = [s for s in sources if s not in depth]
        if missing:
            raise ValueError(f"{flow.name}: {n.key} uses {missing} before they are described")
        depth[n.key] = 1 + max((depth[s] for s in sources), default=-1)
    return depth


def _size(n: NodeSpec, defn: dict[str, Any]) -> list[int]:
    specs = input_specs(defn)
    sockets = sum(1 for name, kind, opt in specs if not is_widget(kind, opt))
    widgets = len(widget_slots(defn))
    height = 46 + 22 * max(sockets, len(defn["output"])) + 26 * widgets
    if any(kind == "STRING" and opt.get("multiline") for _, kind, opt in specs):
        height += 110
    if defn.get("output_node"):
        height += 240
    width = 360 if n.type.startswith("SDA") else 320
    return [width, height]


def node_ids(flow: Flow) -> dict[str, int]:
    """Node id of each described node: in description order after the Note (id 1)."""
    return {n.key: i for i, n in enumerate(flow.nodes, start=2)}


def _note_node(n: NodeSpec, node_id: int, order: int, flow: Flow) -> dict[str, Any]:
    """A frontend-only Note: its one widget is its text."""
    if set(n.values) != {"text"} or n.type != "Note":
        raise ValueError(f"{flow.name}: {n.key}: only a Note with text=... is supported here")
    return {"id": node_id, "type": n.type, "pos": [0, 0], "size": [440, 300], "flags": {},
            "order": order, "mode": n.mode, "inputs": [], "outputs": [],
            "title": n.title or "Note", "properties": {},
            "widgets_values": [n.values["text"].strip() + "\n"], "color": "#432", "bgcolor": "#653"}


def build(flow: Flow, defs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The UI-format workflow for `flow`, widget values ordered by ComfyUI's definitions in `defs`."""
    ids = node_ids(flow)
    depth = _depths(flow)
    links: list[list] = []
    nodes: dict[str, dict[str, Any]] = {}
    for order, n in enumerate(flow.nodes, start=1):
        if n.type in VIRTUAL_TYPES:
            nodes[n.key] = _note_node(n, ids[n.key], order, flow)
            continue
        defn = defs[n.type]
        widget_names = {name for name, kind, opt in input_specs(defn) if is_widget(kind, opt)}
        names = {name for name, _, _ in input_specs(defn)}
        if names & FLOW_SETTINGS:
            raise ValueError(f"{n.type} has an input named like a Flow.add setting: {names & FLOW_SETTINGS}")
        unknown = set(n.values) - names
        if unknown:
            raise ValueError(f"{flow.name}: {n.key} ({n.type}) has no inputs {sorted(unknown)}")
        inputs = []
        for name, kind, options in input_specs(defn):
            if name in widget_names:
                continue
            source = n.values.get(name)
            link_id = None
            if source is not None:
                origin = defs[nodes[source.key]["type"]]
                slot = _output_index(origin, source.slot)
                out_type = origin["output"][slot]
                if kind not in ("*", out_type):
                    raise ValueError(f"{flow.name}: {source.key}[{slot}] is {out_type}, {n.key}.{name} wants {kind}")
                link_id = len(links) + 1
                links.append([link_id, ids[source.key], slot, ids[n.key], len(inputs), out_type])
                nodes[source.key]["outputs"][slot]["links"].append(link_id)
            inputs.append({"name": name, "type": kind, "link": link_id})
        values: list[Any] = []
        slots = widget_slots(defn)
        controlled = {slots[i - 1] for i, name in enumerate(slots) if name == CONTROL}
        if set(n.controls) - controlled:
            raise ValueError(f"{flow.name}: {n.key} ({n.type}) has no control widget on {sorted(set(n.controls) - controlled)}")
        for i, name in enumerate(slots):
            if name == CONTROL:  # the value of the control widget of the widget before it
                values.append(n.controls.get(slots[i - 1], "fixed"))
            else:
                options = next(opt for nm, _, opt in input_specs(defn) if nm == name)
                values.append(_value(n, name, options))
        properties: dict[str, Any] = {"Node name for S&R": n.type}
        models = [flow.model_links[v] for v in values if isinstance(v, str) and v in flow.model_links]
        if models:
            properties["models"] = models
        node: dict[str, Any] = {
            "id": ids[n.key], "type": n.type, "pos": [0, 0], "size": _size(n, defn), "flags": {},
            "order": order, "mode": n.mode, "inputs": inputs,
            "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                        for i, (name, kind) in enumerate(zip(defn["output_name"], defn["output"]))],
            "properties": properties, "widgets_values": values,
        }
        if n.title:
            node["title"] = n.title
        nodes[n.key] = node
    note = {"id": 1, "type": "MarkdownNote", "pos": [0, 0], "size": [440, 560], "flags": {}, "order": 0,
            "mode": 0, "inputs": [], "outputs": [], "title": "Read me: model files",
            "properties": {}, "widgets_values": [flow.note.strip() + "\n"], "color": "#432", "bgcolor": "#653"}
    _layout(note, [(nodes[n.key], depth[n.key]) for n in flow.nodes])
    all_nodes = [note, *nodes.values()]
    return {
        "last_node_id": len(flow.nodes) + 1, "last_link_id": len(links),
        "nodes": all_nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": _view(all_nodes)}, "version": 0.4,
    }


def _view(nodes: list[dict[str, Any]], screen: tuple[int, int] = (1500, 780),
          margin: tuple[int, int] = (70, 120), readable: float = 0.6) -> dict[str, Any]:
    """The canvas view saved with the workflow: as much as fits on a laptop screen below the toolbars, the
    Note top left, but never below the zoom where the frontend stops drawing text (0.6 in 0.8.0's).
    The frontend draws canvas point p at screen (p + offset) * scale."""
    width = max(n["pos"][0] + n["size"][0] for n in nodes)
    height = max(n["pos"][1] + n["size"][1] for n in nodes)
    scale = round(max(readable, min(1.0, screen[0] / width, screen[1] / height)), 2)
    return {"scale": scale, "offset": [round(margin[0] / scale), round(margin[1] / scale)]}


def _layout(note: dict[str, Any], placed: list[tuple[dict[str, Any], int]], gap: int = 50) -> None:
    """Columns left to right by depth, nodes stacked top-down in description order; the Note leftmost."""
    note["pos"] = [0, 0]
    columns: dict[int, list[dict[str, Any]]] = {}
    for node, col in placed:
        columns.setdefault(col, []).append(node)
    x = note["size"][0] + gap
    for col in sorted(columns):
        y = 0
        for node in columns[col]:
            node["pos"] = [x, y]
            y += node["size"][1] + gap
        x += max(node["size"][0] for node in columns[col]) + gap


def _json(value: Any, indent: str = "") -> str:
    """JSON with one key per line, but short lists of scalars (pos, size, links, widget values) inline."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def dump(workflow: dict[str, Any]) -> str:
    return _json(workflow) + "\n"


def workflow_text(flow: Flow) -> str:
    """The file text of `flow` as workflows/<name>.json, from the running ComfyUI's node definitions."""
    return dump(build(flow, node_defs(flow.types)))
