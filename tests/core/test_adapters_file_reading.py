"""Reading adapter files: only complete, finite safetensors get through; names never leave the models folder."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file

from sda_core.adapters import AdapterError, ModelLayout, load_adapter, read_safetensors, resolve_in_folder
from sdatest.adapter_files import write_lora, zimage_layout


def small_file(path, **extra):
    tensors = {"a.lora_A.weight": torch.ones(2, 3), "a.lora_B.weight": torch.full((4, 2), 0.5), **extra}
    save_file(tensors, str(path), metadata={"ss_network_dim": "2"})
    return path


def test_reads_tensors_and_metadata(tmp_path):
    tensors, metadata = read_safetensors(small_file(tmp_path / "ok.safetensors"))
    assert set(tensors) == {"a.lora_A.weight", "a.lora_B.weight"}
    assert torch.equal(tensors["a.lora_B.weight"], torch.full((4, 2), 0.5))
    assert metadata == {"ss_network_dim": "2"}


@pytest.mark.parametrize("ext", [".pt", ".ckpt", ".bin", ".pth"])
def test_pickle_extensions_refused_with_conversion_hint(tmp_path, ext):
    path = tmp_path / f"style{ext}"
    torch.save({"a.lora_A.weight": torch.ones(2, 2)}, path)
    with pytest.raises(AdapterError) as info:
        read_safetensors(path)
    message = str(info.value)
    assert f"style{ext}" in message and "pickle" in message and ".safetensors" in message


def test_pickle_renamed_to_safetensors_refused_by_magic_bytes(tmp_path):
    path = tmp_path / "renamed.safetensors"
    torch.save({"a.lora_A.weight": torch.ones(2, 2)}, path)
    with pytest.raises(AdapterError, match=r"renamed\.safetensors: .*pickle.*convert it to \.safetensors"):
        read_safetensors(path)
    legacy = tmp_path / "legacy.safetensors"
    torch.save({"x": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(AdapterError, match=r"legacy\.safetensors: .*pickle"):
        read_safetensors(legacy)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(AdapterError, match=r"empty\.safetensors: the file is empty"):
        read_safetensors(path)


@pytest.mark.parametrize("keep", [0.5, 0.02])  # cut inside the tensor data, cut inside the header
def test_truncated_file(tmp_path, keep):
    whole = small_file(tmp_path / "whole.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(whole[: max(10, int(len(whole) * keep))])
    with pytest.raises(AdapterError, match=r"cut\.safetensors: the file is truncated"):
        read_safetensors(path)


def test_random_bytes_are_not_safetensors(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(AdapterError, match=r"noise\.safetensors: not a safetensors file"):
        read_safetensors(path)
    text = tmp_path / "notes.safetensors"
    text.write_text("{this is not json at all}")
    with pytest.raises(AdapterError, match=r"notes\.safetensors: not a safetensors file"):
        read_safetensors(text)


@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (float("-inf"), "Inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_non_finite_tensor_named(tmp_path, bad, word, dtype):
    broken = torch.zeros(3, 3, dtype=dtype)
    broken[1, 2] = bad
    path = small_file(tmp_path / "diverged.safetensors", **{"b.lora_B.weight": broken})
    with pytest.raises(AdapterError) as info:
        read_safetensors(path)
    message = str(info.value)
    assert "diverged.safetensors" in message and "'b.lora_B.weight'" in message and word in message
    assert "'a.lora_A.weight'" not in message


def test_label_replaces_file_name_in_messages(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_bytes(b"")
    with pytest.raises(AdapterError, match=r"^my label: "):
        read_safetensors(path, label="my label")


def test_load_adapter_propagates_file_errors(tmp_path):
    path = tmp_path / "cut.safetensors"
    write_lora(tmp_path / "good.safetensors", zimage_layout())
    path.write_bytes((tmp_path / "good.safetensors").read_bytes()[:-100])
    with pytest.raises(AdapterError, match=r"cut\.safetensors: the file is truncated"):
        load_adapter(path, ModelLayout(zimage_layout()))
    with pytest.raises(AdapterError, match=r"<state dict>: non-finite"):
        load_adapter({"layers.0.attention.qkv.lora_A.weight": torch.full((2, 256), float("nan")),
                      "layers.0.attention.qkv.lora_B.weight": torch.ones(768, 2)}, ModelLayout(zimage_layout()))


# ---------------------------------------------------------------- resolve_in_folder
@pytest.fixture
def loras(tmp_path):
    root = tmp_path / "models" / "loras"
    (root / "styles").mkdir(parents=True)
    small_file(root / "sda.safetensors")
    small_file(root / "styles" / "ink.safetensors")
    small_file(tmp_path / "secret.safetensors")
    return root


def test_resolves_files_and_subfolders(loras):
    assert resolve_in_folder(str(loras), "sda.safetensors") == os.path.realpath(loras / "sda.safetensors")
    assert resolve_in_folder(str(loras), "styles/ink.safetensors").endswith(os.path.join("styles", "ink.safetensors"))


def test_symlink_inside_the_folder_is_fine(loras):
    os.symlink(loras / "sda.safetensors", loras / "alias.safetensors")
    assert resolve_in_folder(str(loras), "alias.safetensors") == os.path.realpath(loras / "sda.safetensors")


@pytest.mark.parametrize("name", ["../../secret.safetensors", "styles/../../../secret.safetensors",
                                  "..\\..\\secret.safetensors"])
def test_dotdot_refused(loras, name):
    with pytest.raises(AdapterError) as info:
        resolve_in_folder(str(loras), name)
    assert name in str(info.value) and "outside" in str(info.value)


def test_absolute_path_refused(loras, tmp_path):
    name = str(tmp_path / "secret.safetensors")
    with pytest.raises(AdapterError) as info:
        resolve_in_folder(str(loras), name)
    assert name in str(info.value) and "absolute" in str(info.value) and "outside" in str(info.value)


def test_symlink_pointing_outside_refused(loras, tmp_path):
    os.symlink(tmp_path / "secret.safetensors", loras / "innocent.safetensors")
    with pytest.raises(AdapterError, match=r"innocent\.safetensors: resolves to .*outside the models folder"):
        resolve_in_folder(str(loras), "innocent.safetensors")
    os.symlink(tmp_path, loras / "up")
    with pytest.raises(AdapterError, match="outside"):
        resolve_in_folder(str(loras), "up/secret.safetensors")


def test_missing_file_and_empty_name(loras):
    with pytest.raises(AdapterError, match=r"nope\.safetensors: no such file in"):
        resolve_in_folder(str(loras), "nope.safetensors")
    with pytest.raises(AdapterError, match="no file name"):
        resolve_in_folder(str(loras), "")
    with pytest.raises(AdapterError, match="no such file"):
        resolve_in_folder(str(loras), "styles")  # a folder is not a file
