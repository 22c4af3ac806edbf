"""The shipped workflows in the real frontend: they load with no missing node and no node in error, the UI
turns them into exactly the prompt our converter makes, and a tiny-model variant queued from the UI runs on
the server and its images show on the canvas.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from sdatest.workflow_api import CORE_TYPES, SAVED_WORKFLOWS_DIR, WORKFLOWS_DIR, as_loaded, tiny_variant, to_api

WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
SAVED_WORKFLOWS = sorted(SAVED_WORKFLOWS_DIR.glob("*.json"))  # as users saved them from 0.1.0
# (workflow, tiny architecture of its family; None: Z-Image): SDXL's checkpoint splits into two tiny nodes,
# Qwen-Image's latents are 5-D and its LoRA goes through ComfyUI's loader
QUEUED = (("seed_grid_diversity_comparison", None), ("sda_lokr_basic", None), ("seed_grid_sdxl", "sdxl"),
          ("seed_grid_qwen_image", "qwen_image"))
RUN_TIMEOUT = 120.0
IMAGE_TYPES = ("SaveImage", "SDASeedDiversityGrid", "SDADiversityCompare")  # nodes that must show an image

LOAD = "async wf => { await app.loadGraphData(wf); }"
NODES = """() => app.graph._nodes.map(n => ({id: n.id, type: n.type, errors: !!n.has_errors,
                                         registered: n.type in LiteGraph.registered_node_types}))"""
DIALOGS = """() => [...document.querySelectorAll('.p-dialog')].filter(d => d.offsetParent !== null)
                                                         .map(d => d.innerText.trim().slice(0, 300))"""
PROMPT = "async () => (await app.graphToPrompt()).output"
OURS = """() => Object.fromEntries(app.graph._nodes.filter(n => n.type.startsWith('SDA'))
                                   .map(n => [n.id, (n.widgets || []).map(w => w.name)]))"""
REPORTS = """() => Object.fromEntries(app.graph._nodes.filter(n => n.type.startsWith('SDA')).map(n => {
                 const w = (n.widgets || []).find(w => w.name === 'report');
                 return [n.id, w ? {value: String(w.value ?? ''), index: n.widgets.indexOf(w),
                                    visible: !!w.element && w.element.offsetParent !== null} : null]; }))"""
SERIALIZED = """() => Object.fromEntries(app.graph.serialize().nodes.filter(n => n.type.startsWith('SDA'))
                                                           .map(n => [n.id, n.widgets_values]))"""
SAVE_AND_RELOAD = "async () => { const wf = app.graph.serialize(); await app.loadGraphData(wf); return wf; }"
PREVIEWS = """id => (app.graph.getNodeById(id).widgets || []).filter(w => w.name === 'preview')
                                                      .map(w => String(w.value ?? ''))"""


def _load(page, workflow: dict[str, Any]) -> None:
    page.evaluate(LOAD, workflow)
    page.wait_for_timeout(1000)  # dialogs (missing nodes / models) open asynchronously after load


def _assert_loaded_cleanly(page, workflow: dict[str, Any]) -> None:
    nodes = page.evaluate(NODES)
    assert sorted(n["id"] for n in nodes) == sorted(n["id"] for n in workflow["nodes"]), "nodes lost on load"
    missing = sorted({n["type"] for n in nodes if not n["registered"]})
    assert not missing, f"node types the frontend does not know: {missing}"
    errored = [f"{n['id']} {n['type']}" for n in nodes if n["errors"]]
    assert not errored, f"nodes flagged in error: {errored}"
    dialogs = page.evaluate(DIALOGS)
    assert not dialogs, f"dialog(s) opened on load (missing nodes or models?): {dialogs}"
    assert page.errors == [], f"page errors: {page.errors}"


def _as_the_server_reads_it(prompt: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """Class and declared inputs per node. Frontend extensions may add display-only widgets that reach the
    prompt (PreviewAny's "preview", differently per frontend version); the server ignores those."""
    def declared(class_type: str) -> set[str]:
        spec = object_info[class_type]["input"]
        return {name for section in ("required", "optional") for name in spec.get(section, {})}

    return {k: {"class_type": v["class_type"],
                "inputs": {n: x for n, x in v["inputs"].items() if n in declared(v["class_type"])}}
            for k, v in prompt.items()}


def test_pack_and_note_types_are_registered_in_the_frontend(page, server):
    ours = sorted(t for t, info in server.object_info.items() if "comfyui-sda" in info.get("python_module", ""))
    assert "SDALoKrLoader" in ours
    wanted = ours + sorted(CORE_TYPES)
    registered = page.evaluate("types => types.filter(t => t in LiteGraph.registered_node_types)", wanted)
    assert registered == wanted, f"missing in the frontend: {sorted(set(wanted) - set(registered))}"


def test_workflows_are_offered_in_the_template_browser(server):
    """ComfyUI lists a pack's workflows/ folder as templates and serves the files under its folder name."""
    listed = server.get_json("/workflow_templates").get("comfyui-sda", [])
    assert sorted(listed) == [p.stem for p in WORKFLOWS]
    for path in WORKFLOWS:
        served = server.get_json(f"/api/workflow_templates/comfyui-sda/{path.name}")
        assert served == json.loads(path.read_text(encoding="utf-8")), path.name


@pytest.mark.parametrize("path", WORKFLOWS + SAVED_WORKFLOWS,
                         ids=[p.stem for p in WORKFLOWS] + [f"saved-0.1.0-{p.stem}" for p in SAVED_WORKFLOWS])
def test_workflow_loads_cleanly_and_queues_what_we_convert(page, server, artifacts, path: Path):
    workflow = json.loads(path.read_text(encoding="utf-8"))
    _load(page, workflow)
    page.screenshot(path=str(artifacts / f"{path.parent.name}-{path.stem}.png"))
    _assert_loaded_cleanly(page, workflow)
    ui_prompt = _as_the_server_reads_it(page.evaluate(PROMPT), server.object_info)
    ours = to_api(as_loaded(workflow, server.object_info), server.object_info)
    assert ui_prompt == _as_the_server_reads_it(ours, server.object_info)


def _run_from_ui(page, server) -> dict[str, Any]:
    """Queue the loaded graph with the UI's own queue call; the finished history entry of that prompt."""
    with page.expect_response(lambda r: r.url.endswith("/prompt") and r.request.method == "POST") as posted:
        page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    response = posted.value
    assert response.ok, f"the server refused the UI's prompt: {response.text()[:2000]}"
    prompt_id = response.json()["prompt_id"]
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            status = entry["status"]
            assert status["status_str"] == "success", f"run failed: {status['messages'][-1:]}\n{server.log_tail()}"
            return entry
        time.sleep(0.5)
    raise AssertionError(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT:.0f} s\n{server.log_tail()}")


@pytest.mark.parametrize("name, arch", QUEUED, ids=[name for name, _ in QUEUED])
def test_tiny_variant_runs_from_the_ui_and_shows_its_images(page, server, artifacts, name: str, arch: str | None):
    path = WORKFLOWS_DIR / f"{name}.json"
    workflow = tiny_variant(json.loads(path.read_text(encoding="utf-8")), server.object_info, arch=arch)
    _load(page, workflow)
    _assert_loaded_cleanly(page, workflow)
    before = ({int(k): v for k, v in page.evaluate(OURS).items()}, page.evaluate(SERIALIZED), _our_prompt(page))
    entry = _run_from_ui(page, server)
    image_nodes = sorted(int(k) for k, v in entry["outputs"].items() if v.get("images"))
    expected = sorted(n["id"] for n in workflow["nodes"] if n["type"] in IMAGE_TYPES and n["mode"] == 0)
    assert expected and set(expected) <= set(image_nodes), f"nodes {expected} should have images: {entry['outputs']}"
    shown = page.wait_for_function(
        """ids => { const ok = ids.filter(id => { const n = app.graph.getNodeById(id);
                     return n?.imgs?.length && n.imgs.every(img => img.complete && img.naturalWidth > 0); });
                   return ok.length === ids.length ? ok : null; }""",
        arg=image_nodes, timeout=30_000).json_value()
    assert sorted(shown) == image_nodes
    for node in workflow["nodes"]:  # PreviewAny shows the LPIPS table on the canvas
        if node["type"] == "PreviewAny" and node["mode"] == 0:
            text = entry["outputs"][str(node["id"])]["text"][0]
            previews = page.evaluate(PREVIEWS, node["id"])
            assert text.strip() and text in previews, f"PreviewAny {node['id']} shows {previews!r}, not {text[:80]!r}"
    page.screenshot(path=str(artifacts / f"{name}-tiny-run.png"))
    _assert_reports_shown_and_serialisation_unchanged(page, server, entry, before)


def _our_prompt(page) -> dict[str, Any]:
    """The API prompt of our nodes, every input the UI sends (unfiltered: a display widget must not show up)."""
    ours = {str(i) for i in page.evaluate(OURS)}
    return {k: v for k, v in page.evaluate(PROMPT).items() if k in ours}


def _assert_reports_shown_and_serialisation_unchanged(page, server, entry, before) -> None:
    """web/sda_report.js puts each SDA node's "text" output into a read-only "report" widget after its own
    widgets, and that widget is neither in the saved workflow's widgets_values nor in the API prompt."""
    widgets_before, values_before, prompt_before = before
    texts = {int(k): "\n\n".join(v["text"]) for k, v in entry["outputs"].items()
             if v.get("text") and int(k) in {int(i) for i in widgets_before}}
    assert texts, "no SDA node returned a text"
    reports = {int(k): v for k, v in page.evaluate(REPORTS).items()}
    for node_id, text in texts.items():
        report = reports[node_id]
        assert report is not None, f"node {node_id} has no report widget after execution"
        assert report["value"] == text and text.strip(), f"node {node_id} shows {report['value'][:200]!r}"
        assert report["visible"], f"node {node_id}: the report text area is not displayed"
    widgets_after = {int(k): v for k, v in page.evaluate(OURS).items()}
    for node_id, names in widgets_before.items():  # the node's own widgets first, unchanged; then display ones
        after = widgets_after[node_id]
        assert after[:len(names)] == names, f"node {node_id}: widgets {after}, before {names}"
        if node_id in texts:
            assert reports[node_id]["index"] >= len(names), f"node {node_id}: report before its own widgets: {after}"
    assert page.evaluate(SERIALIZED) == values_before, "widgets_values of our nodes changed by execution"
    assert _our_prompt(page) == prompt_before, "the API prompt of our nodes changed by execution"
    saved = page.evaluate(SAVE_AND_RELOAD)  # a workflow saved after execution loads back to the same values
    page.wait_for_timeout(500)
    assert {n["id"]: n["widgets_values"] for n in saved["nodes"] if n["type"].startswith("SDA")} == {
        int(k): v for k, v in values_before.items()}
    assert page.evaluate(SERIALIZED) == values_before, "widgets_values changed by saving and reloading"
    assert _our_prompt(page) == prompt_before, "the API prompt of our nodes changed by saving and reloading"
    assert page.errors == [], f"page errors: {page.errors}"


CANCEL_STEPS = 100_000  # far more than a run reaches before the Cancel
QUEUE_WITH_PROGRESS = """async prompt => { const api = window.app.api; window.sdaProgress = [];
    api.addEventListener('progress', e => window.sdaProgress.push(e.detail));
    const r = await api.fetchApi('/prompt', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                            body: JSON.stringify({prompt, client_id: api.clientId})});
    return await r.json(); }"""


def test_cancel_during_training_from_the_ui_saves_the_lokr_and_the_checkpoint(page, server):
    """Training queued on the real server; once its progress bar moves, the UI's Cancel (the frontend's
    api.interrupt, what the Cancel button calls): the prompt ends normally and both files exist."""
    from safetensors import safe_open

    from sdatest.graph import Graph

    g = Graph()
    conditioning = g.add("ConditioningCombine", conditioning_1=g.add("SDATest_TinyConditioning", seed=0, tokens=8),
                         conditioning_2=g.add("SDATest_TinyConditioning", seed=2, tokens=8))
    g.add("SDATrainLoKr", student=g.add("SDATest_TinyZImage", seed=0, dtype="fp32"),
          teacher=g.add("SDATest_TinyZImage", seed=1, dtype="fp32"), conditioning=conditioning, prompts="",
          width=64, height=64, steps=CANCEL_STEPS, learning_rate=1e-3, lambda_div=1.0, huber_delta=0.08,
          pool_kernel=8, div_skip=7, student_steps=8, lokr_factor=8, lokr_rank=0, include_refiners=False,
          gradient_checkpointing=False, seed=0, save_name="e2e_cancel", checkpoint_every=0, resume=False)
    queued = page.evaluate(QUEUE_WITH_PROGRESS, g.prompt())
    assert "prompt_id" in queued, f"the server refused the prompt: {queued}"
    prompt_id = queued["prompt_id"]
    page.wait_for_function(f"() => window.sdaProgress.some(p => p.max === {CANCEL_STEPS} && p.value >= 2)",
                           timeout=RUN_TIMEOUT * 1000)
    page.evaluate("async id => { await window.app.api.interrupt(id); }", prompt_id)
    deadline = time.monotonic() + RUN_TIMEOUT
    while (entry := server.get_json(f"/history/{prompt_id}").get(prompt_id)) is None or \
            entry.get("status", {}).get("completed") is None:
        assert time.monotonic() < deadline, f"the cancelled prompt did not end\n{server.log_tail()}"
        time.sleep(0.5)
    assert entry["status"]["status_str"] == "success", f"{entry['status']['messages'][-1:]}\n{server.log_tail()}"
    report = "\n".join(next(v["text"] for v in entry["outputs"].values() if v.get("text")))
    assert f"of {CANCEL_STEPS}" in report and "interrupted at step" in report, report
    lokr = server.base / "models" / "loras" / "e2e_cancel.safetensors"
    checkpoint = server.base / "output" / "sda_checkpoints" / "e2e_cancel.ckpt.safetensors"
    assert lokr.is_file() and checkpoint.is_file(), f"missing after Cancel: {lokr}, {checkpoint}"
    with safe_open(str(lokr), framework="pt") as f, safe_open(str(checkpoint), framework="pt") as c:
        steps = int(c.metadata()["step"])
        assert f.metadata()["sda_interrupted"] == "true" and f.metadata()["sda_steps"] == str(steps)
        assert 2 <= steps < CANCEL_STEPS
