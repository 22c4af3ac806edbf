"""Hostile or damaged adapter files: metadata scales, metadata patterns, rank 0, contradictory factors, overflow.

Each of these loaded (or hung, or crashed with a raw Python error) before; each is now an AdapterError that
names the file and the key, or a finite result. Python's `re` is the reference for what PEFT's pattern
lookup (`re.match(rf"(.*\\.)?({key})$", name)`) selects, on patterns it can run.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from sda_core.adapters import MAX_SCALE, AdapterError, ModelLayout, apply_deltas, load_adapter
from sda_core.adapters.patterns import PatternError, TailPattern
from sda_core.step_strengths import ScheduledWeight, StepStrength, resolve
from sdatest.adapter_files import diffusers_lora_metadata, write_lora, write_sda_lokr, zimage_layout

SHAPES = zimage_layout()
LAYOUT = ModelLayout(SHAPES)


def lora_with_metadata(tmp_path, raw_metadata: str, name: str = "meta.safetensors"):
    path = tmp_path / name
    write_lora(path, SHAPES, rank=4, prefix="transformer.", metadata={"lora_adapter_metadata": raw_metadata})
    return path


def error_of(path) -> str:
    with pytest.raises(AdapterError) as info:
        load_adapter(path, LAYOUT)
    return str(info.value)


def peft_json(**cfg) -> str:
    """diffusers' metadata text for a config, written with Python's json (which writes NaN as NaN)."""
    base = {"r": 4, "lora_alpha": 8, "alpha_pattern": {}, "rank_pattern": {}}
    base.update(cfg)
    return json.dumps({f"transformer.{k}": v for k, v in base.items()})


@pytest.mark.parametrize("cfg, key, found", [
    ({"lora_alpha": math.nan}, "lora_alpha", "nan"),
    ({"lora_alpha": math.inf}, "lora_alpha", "inf"),
    ({"alpha_pattern": {"layers.0.attention.to_q": "NaN"}}, "alpha_pattern['layers.0.attention.to_q']", "'NaN'"),
    ({"alpha_pattern": {"to_q": "eight"}}, "alpha_pattern['to_q']", "'eight'"),
    ({"lora_alpha": "abc"}, "lora_alpha", "'abc'"),
    ({"lora_alpha": [8]}, "lora_alpha", "[8]"),
    ({"alpha_pattern": [1, 2]}, "alpha_pattern", "list"),
    ({"rank_pattern": "to_q"}, "rank_pattern", "str"),
    ({"rank_pattern": {"to_q": 2.5}}, "rank_pattern['to_q']", "2.5"),
    ({"r": 0}, "r", "0"),
    ({"use_rslora": "maybe"}, "use_rslora", "'maybe'"),
])
def test_malformed_or_non_finite_metadata_names_file_and_key(tmp_path, cfg, key, found):
    message = error_of(lora_with_metadata(tmp_path, peft_json(**cfg)))
    assert message.startswith(f"meta.safetensors: lora_adapter_metadata {key} is ")
    assert found in message and "expected" in message


@pytest.mark.parametrize("raw, words", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2, 3]", ["a list", "JSON object"]),
])
def test_metadata_that_is_not_a_json_object_is_refused(tmp_path, raw, words):
    message = error_of(lora_with_metadata(tmp_path, raw))
    assert message.startswith("meta.safetensors: ") and all(w in message for w in words)


@pytest.mark.parametrize("cfg", [{"lora_alpha": 1e308}, {"alpha_pattern": {"to_q": 1e20}}, {"lora_alpha": -1e6}])
def test_finite_but_absurd_metadata_scale_is_refused_with_the_bound(tmp_path, cfg):
    message = error_of(lora_with_metadata(tmp_path, peft_json(**cfg)))
    assert message.startswith("meta.safetensors: layers.")
    assert "lora_adapter_metadata" in message and f"±{MAX_SCALE:g}" in message


def test_absurd_alpha_tensor_is_refused_naming_the_tensor(tmp_path):
    path = tmp_path / "alpha.safetensors"
    write_lora(path, SHAPES, rank=4, alpha=1e30)
    message = error_of(path)
    assert message.startswith("alpha.safetensors: ") and ".alpha" in message and f"±{MAX_SCALE:g}" in message


def test_sane_metadata_still_loads_with_the_same_scales(tmp_path):
    path = tmp_path / "ok.safetensors"
    write_lora(path, SHAPES, rank=4, prefix="transformer.",
               metadata=diffusers_lora_metadata(16, 4, alpha_pattern={"attention.to_q": "2"}, use_rslora=False))
    scales = {m.name: m.scale for _, m in load_adapter(path, LAYOUT).placements}
    assert scales["layers.0.attention.to_q"] == 0.5 and scales["layers.0.attention.to_k"] == 4.0


def test_catastrophic_backtracking_pattern_returns_at_once(tmp_path):
    """`(.*.*)*zzz` makes Python's re run for ever on a module name (holding the GIL, so no thread can stop it):
    the load runs in a child process that a hang would leave unfinished; here it matches nothing, at once."""
    path = lora_with_metadata(tmp_path, peft_json(alpha_pattern={"(.*.*)*zzz": 8}))
    script = ("import sys; from sda_core.adapters import ModelLayout, load_adapter; "
              "from sdatest.adapter_files import zimage_layout; "
              "loaded = load_adapter(sys.argv[1], ModelLayout(zimage_layout())); "
              "print(sorted({m.scale for _, m in loaded.placements}))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        done = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
                              timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("loading hung on the metadata pattern (catastrophic backtracking)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[2.0]"  # lora_alpha 8 / rank 4: no pattern matched


@pytest.mark.parametrize("pattern", [
    "to_q", "attention.to_q", r"layers\.0\..*", ".*to_[qk]", r"attention\.to_(q|k)", "layers.1.*", "^layers.0.attention.to_q",
    "to_q$", r"[^.]+\.w1", r"layers\.\d+\.feed_forward\.w[13]", "layers.1{1,2}.*", "(?:attention)\\.to_v", "w2|to_q",
    "attention.to_k{1,}", r"\w+\.to_out\.0", "ers.0.attention.to_q", "out.0",
])
def test_linear_matcher_selects_what_pythons_re_selects(pattern):
    names = [n.rsplit(".weight", 1)[0] for n in SHAPES if n.endswith(".weight")]
    names += [f"layers.{i}.attention.{p}" for i in (0, 1) for p in ("to_q", "to_k", "to_v", "to_out.0")]
    matcher = TailPattern(pattern)
    for name in names:
        assert matcher.matches(name) == bool(re.match(rf"(.*\.)?({pattern})$", name)), (pattern, name)


@pytest.mark.parametrize("pattern, words", [
    ("(?=to_q)", "look-around"), (r"(to_q)\1", "back-references"), ("(to_q", "never closed"), ("x" * 2000, "at most"),
])
def test_patterns_that_cannot_be_matched_linearly_are_refused_naming_the_key(tmp_path, pattern, words):
    with pytest.raises(PatternError, match=words):
        TailPattern(pattern)
    message = error_of(lora_with_metadata(tmp_path, peft_json(alpha_pattern={pattern: 8})))
    assert message.startswith("meta.safetensors: lora_adapter_metadata alpha_pattern[") and words in message


def test_lora_of_rank_zero_is_an_error_naming_the_key():
    sd = {"diffusion_model.layers.0.attention.out.lora_A.weight": torch.ones(0, 256),
          "diffusion_model.layers.0.attention.out.lora_B.weight": torch.ones(256, 0),
          "diffusion_model.layers.0.attention.out.alpha": torch.tensor(4.0)}
    with pytest.raises(AdapterError, match=r"rank0\.safetensors: .*attention\.out\.lora_.\.weight has shape .*rank 0"):
        load_adapter(sd, LAYOUT, label="rank0.safetensors")


@pytest.mark.parametrize("stray", ["lokr_w2_a", "lokr_w2_b", "lokr_t2", "lokr_w1_a"])
def test_stray_low_rank_factor_beside_a_full_lokr_half_is_refused_naming_it(tmp_path, stray):
    path = tmp_path / "lokr.safetensors"
    write_sda_lokr(path, SHAPES, factor=8, layers=[0], targets=["attention.to_out.0"])
    from safetensors.torch import load_file, save_file
    sd = load_file(path)
    sd[f"diffusion_model.layers.0.attention.to_out.0.{stray}"] = torch.ones(4, 4)
    save_file(sd, path)
    message = error_of(path)
    full = "lokr_w1" if stray.startswith("lokr_w1") else "lokr_w2"
    assert message.startswith("lokr.safetensors: ") and f"to_out.0.{stray} sits beside" in message
    assert f"to_out.0.{full}" in message


def test_factors_whose_product_overflows_are_an_error_naming_the_layer():
    """Each factor is finite (1e20) but their product is not: the patch must fail, not make every image inf."""
    sd = {"diffusion_model.layers.1.feed_forward.w2.lora_A.weight": torch.full((2, 768), 1e20),
          "diffusion_model.layers.1.feed_forward.w2.lora_B.weight": torch.full((256, 2), 1e20)}
    loaded = load_adapter(sd, LAYOUT, label="huge.safetensors")
    target, module = loaded.placements[0]
    weight = torch.zeros(SHAPES[target.param])
    with pytest.raises(AdapterError, match=r"huge\.safetensors: layer layers\.1\.feed_forward\.w2: .*not finite"):
        apply_deltas(weight, [(module, 1.0)])
    state = StepStrength(1.0, lambda n: resolve(n, [1.0]))
    state.update(0.5, None)
    with pytest.raises(AdapterError, match=r"huge\.safetensors: layer layers\.1\.feed_forward\.w2"):
        ScheduledWeight([(None, module)], state)(weight)


def test_change_that_overflows_half_precision_weights_is_an_error():
    sd = {"diffusion_model.layers.1.feed_forward.w2.lora_A.weight": torch.full((1, 768), 1e3),
          "diffusion_model.layers.1.feed_forward.w2.lora_B.weight": torch.full((256, 1), 1e3)}
    (target, module), = load_adapter(sd, LAYOUT, label="big.safetensors").placements
    assert torch.isfinite(apply_deltas(torch.zeros(SHAPES[target.param]), [(module, 1.0)])).all()  # 7.7e8 fits fp32
    with pytest.raises(AdapterError, match=r"big\.safetensors: layer layers\.1\.feed_forward\.w2: .*float16"):
        apply_deltas(torch.zeros(SHAPES[target.param], dtype=torch.float16), [(module, 1.0)])
