"""The shipped workflows/*.json without ComfyUI: they parse, their graphs hold together, they use only core
node types and ours, and each tells the user which model files to download and where to put them.

What needs ComfyUI's node definitions (widget order, value ranges, prompt validation, execution) is in
tests/integration/test_workflows.py; loading in the real frontend is in tests/e2e/.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


from sdatest.pack_source import registered_node_ids
from sdatest.workflow_api import CORE_TYPES, FAMILY_ARCHS
from workflow_flows import FAMILY_FILES, all_flows

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
NOTE_TYPES = ("Note", "MarkdownNote")
MODEL_FILES = ("diffusion_models/z_image_turbo_bf16.safetensors", "text_encoders/qwen_3_4b.safetensors",
               "vae/ae.safetensors")
# The folder under ComfyUI/models each loader reads its file widgets from.
LOADER_FOLDERS = {"UNETLoader": "diffusion_models", "CheckpointLoaderSimple": "checkpoints",
                  "CLIPLoader": "text_encoders", "DualCLIPLoader": "text_encoders", "TripleCLIPLoader": "text_encoders",
                  "VAELoader": "vae", "LoraLoaderModelOnly": "loras", "SDALoKrLoader": "loras",
                  "SDAAdapterStack": "loras", "SDAInvertTrainingAdapter": "loras", "SDAScheduledAdapter": "loras",
                  "SDATrainLoKr": "loras"}
FAMILY_WORKFLOWS = {"sdxl": "seed_grid_sdxl", "flux": "seed_grid_flux", "sd35": "seed_grid_sd35",
                    "qwen_image": "seed_grid_qwen_image"}
NOT_Z_IMAGE = {*FAMILY_WORKFLOWS.values(), "sda_training_sdxl"}  # workflows of the other families


def note_text(workflow: dict[str, Any]) -> str:
    return "\n".join(str(v) for n in workflow["nodes"] if n["type"] in NOTE_TYPES for v in n["widgets_values"])


def test_every_described_workflow_is_shipped_and_nothing_else():
    """workflows/ holds exactly the workflows scripts/workflow_flows.py describes."""
    described = {f.name for f in all_flows()}
    assert {"sda_lokr_basic", "sda_style_stack", "training_adapter_inversion", "sda_early_steps"} <= described
    assert {p.stem for p in WORKFLOWS} == described


def test_described_workflows_use_only_core_and_registered_node_types():
    """A description naming a node type the registry does not list fails here, not in a user's browser."""
    ours = registered_node_ids()
    for flow in all_flows():
        unknown = sorted(flow.types - CORE_TYPES - ours)
        assert not unknown, f"{flow.name}: node types neither core (CORE_TYPES) nor registered by the pack: {unknown}"


def test_top_level_format(workflow):
    assert workflow["version"] == 0.4
    for key in ("last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra"):
        assert key in workflow, key
    ids = [n["id"] for n in workflow["nodes"]]
    assert len(ids) == len(set(ids)), "duplicate node ids"
    assert workflow["last_node_id"] >= max(ids)
    assert workflow["last_link_id"] >= max((link[0] for link in workflow["links"]), default=0)
    for node in workflow["nodes"]:
        assert node["properties"].get("Node name for S&R", node["type"]) == node["type"]
        assert isinstance(node["widgets_values"], list)
        assert node["mode"] in (0, 2, 4)


def test_links_are_consistent(workflow):
    """Every link is listed on both ends, at the slots it names, with the types of both sockets."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    link_ids = [link[0] for link in workflow["links"]]
    assert len(link_ids) == len(set(link_ids)), "duplicate link ids"
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        inp = nodes[target]["inputs"][target_slot]
        assert link_id in out["links"], f"link {link_id} missing on output {out['name']} of node {origin}"
        assert inp["link"] == link_id, f"link {link_id} missing on input {inp['name']} of node {target}"
        assert out["type"] == kind and inp["type"] in (kind, "*"), f"link {link_id}: {out['type']} -> {inp['type']}"
    for node in workflow["nodes"]:
        for inp in node["inputs"]:
            assert inp["link"] is None or inp["link"] in link_ids, f"node {node['id']}.{inp['name']}: dangling"
        for out in node["outputs"]:
            for link_id in out["links"] or []:
                assert link_id in link_ids, f"node {node['id']}.{out['name']}: dangling link {link_id}"


def test_only_core_and_our_node_types(workflow):
    ours = registered_node_ids()
    assert {"SDALoKrLoader", "SDAAdapterStack", "SDAInvertTrainingAdapter"} <= ours
    unknown = {n["type"] for n in workflow["nodes"]} - CORE_TYPES - ours
    assert not unknown, f"node types neither core (CORE_TYPES) nor registered by the pack: {unknown}"


def test_note_names_every_file_and_where_it_goes(shipped):
    name, workflow = shipped
    text = note_text(workflow)
    assert text, "no Note node"
    if name not in NOT_Z_IMAGE:  # the Z-Image workflows: its three files and the adapters' folder
        for path in MODEL_FILES:
            folder, file = path.split("/")
            assert file in text and folder in text, f"the Note does not say where {file} goes"
        assert "models/loras" in text
    for node in workflow["nodes"]:
        files = [v for v in node["widgets_values"] if isinstance(v, str) and v.endswith(".safetensors")]
        if node["type"] in NOTE_TYPES or not files:
            continue
        folder = LOADER_FOLDERS[node["type"]]
        for file in files:
            assert file in text and folder in text, f"the Note does not say that {file} goes in models/{folder}"
            if name in NOT_Z_IMAGE:
                assert f"`models/{folder}/{file}`" in text, f"{name}: the Note lists no `models/{folder}/{file}`"
    used = {v for n in workflow["nodes"] if n["type"] not in NOTE_TYPES
            for v in n["widgets_values"] if isinstance(v, str) and v.endswith(".safetensors")}
    assert used, "no model file in the widgets"
    missing = sorted(name for name in used if name not in text)
    assert not missing, f"files the workflow loads but its Note does not name: {missing}"


def test_nodes_do_not_overlap(workflow):
    """A readable layout: no node drawn over another."""
    boxes = [(n["id"], *n["pos"], *n["size"]) for n in workflow["nodes"]]
    for i, (a, ax, ay, aw, ah) in enumerate(boxes):
        for b, bx, by, bw, bh in boxes[i + 1:]:
            apart = ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay
            assert apart, f"nodes {a} and {b} overlap"


def test_early_steps_workflow_compares_four_schedules():
    """Issue 7: baseline vs SDA on all steps vs the first 2 / 4 steps, four grids into one compare -> Save,
    and a Note on the trade-off."""
    wf = json.loads((REPO / "workflows" / "sda_early_steps.json").read_text(encoding="utf-8"))
    nodes = {n["id"]: n for n in wf["nodes"]}
    by_type: dict[str, list[dict[str, Any]]] = {}
    for n in wf["nodes"]:
        by_type.setdefault(n["type"], []).append(n)
    schedules = sorted(v for n in by_type["SDAScheduledAdapter"] for v in n["widgets_values"] if isinstance(v, str)
                       and "," in v)
    assert schedules == ["1,1,0,0,0,0,0,0", "1,1,1,1,0,0,0,0"]
    assert len(by_type["SDALoKrLoader"]) == 1
    (compare,) = by_type["SDADiversityCompare"]
    grids = [n for n in by_type["SDASeedDiversityGrid"] if n["mode"] == 0]
    assert len(grids) == 4
    links = {link[0]: link for link in wf["links"]}
    fed = [nodes[links[i["link"]][1]]["type"] for i in compare["inputs"] if i["link"] is not None]
    assert fed == ["SDASeedDiversityGrid"] * 4

    def model_source(node):
        link = next(i["link"] for i in node["inputs"] if i["name"] == "model")
        return nodes[links[link][1]]

    sources = [model_source(g)["type"] for g in sorted(grids, key=lambda n: n["id"])]
    assert sources == ["ModelSamplingAuraFlow", "SDALoKrLoader", "SDAScheduledAdapter", "SDAScheduledAdapter"]
    assert compare["widgets_values"][:2] == ["1", "none"], "baseline = the plain Turbo row, no teacher"
    saved = [links[i["link"]][1] for n in by_type["SaveImage"] for i in n["inputs"]]
    assert compare["id"] in saved
    (note,) = by_type["Note"]
    text = note["widgets_values"][0]
    assert "first" in text and "sharp" in text and "LPIPS" in text


def _flow(name: str):
    return next(flow for flow in all_flows() if flow.name == name)


def test_every_family_with_a_tiny_architecture_has_a_seed_grid_workflow():
    """Issue 15: one seed-grid workflow per family, each run on that family's tiny models (integration tier)."""
    assert set(FAMILY_WORKFLOWS) == set(FAMILY_FILES)
    assert set(FAMILY_ARCHS) == set(FAMILY_WORKFLOWS.values())
    assert sorted(a for archs in FAMILY_ARCHS.values() for a in archs) == sorted(
        ["sdxl", "sdxl_v", "flux_schnell", "sd35", "qwen_image"])


def test_family_seed_grids_load_their_models_with_comfyuis_stock_loaders():
    """The loaders, text-encoder types and empty latent a user of each family takes (ComfyUI's own examples)."""
    expected = {
        "sdxl": ({"CheckpointLoaderSimple"}, "EmptyLatentImage", {}),
        "flux": ({"UNETLoader", "DualCLIPLoader", "VAELoader"}, "EmptySD3LatentImage", {"DualCLIPLoader": "flux"}),
        "sd35": ({"CheckpointLoaderSimple", "TripleCLIPLoader"}, "EmptySD3LatentImage", {}),
        "qwen_image": ({"UNETLoader", "CLIPLoader", "VAELoader", "LoraLoaderModelOnly"}, "EmptySD3LatentImage",
                       {"CLIPLoader": "qwen_image"}),
    }
    for family, (loaders, latent, clip_types) in expected.items():
        flow = _flow(FAMILY_WORKFLOWS[family])
        assert {n.type for n in flow.nodes if n.type in LOADER_FOLDERS} == loaders, family
        assert {n.type for n in flow.nodes if n.type.startswith("Empty")} == {latent}, family
        for loader, clip_type in clip_types.items():
            (node,) = [n for n in flow.nodes if n.type == loader]
            assert node.values["type"] == clip_type, family
        files = {v for n in flow.nodes for v in n.values.values() if isinstance(v, str) and v.endswith(".safetensors")}
        assert files == {f.name for f in FAMILY_FILES[family]}, f"{family}: loaded files and the listed ones differ"


def test_family_seed_grids_sample_as_their_ksampler_and_their_card():
    """The KSampler beside each grid renders the grid's first seed with the grid's settings (so its image is the
    grid's first), at cfg 1 (distilled) and the steps of the student's card."""
    steps = {"sdxl": 4, "flux": 4, "sd35": 4, "qwen_image": 8}
    for family, name in FAMILY_WORKFLOWS.items():
        nodes = {n.key: n for n in _flow(name).nodes}
        grid, sampler, latent = nodes["grid"], nodes["sampler"], nodes["latent"]
        for key in ("steps", "cfg", "sampler_name", "scheduler", "seed"):
            assert grid.values[key] == sampler.values[key], f"{name}: {key}"
        assert (grid.values["width"], grid.values["height"]) == (latent.values["width"], latent.values["height"])
        assert grid.values["model"] == sampler.values["model"] and grid.values["vae"] == nodes["decode"].values["vae"]
        assert grid.values["steps"] == steps[family] and grid.values["cfg"] == 1.0, name
        assert grid.values["num_seeds"] == 16 and latent.values["batch_size"] == 1
