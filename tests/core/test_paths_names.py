"""File names from widgets: refused before anything is written when the platform could not create them."""
import pytest

from sda_core.paths import PathEscapes, check_new_file_name, path_inside


@pytest.mark.parametrize("name", ["sda_lokr", "runs/sda_v2", "a.b-c_d", "é" * 100])
def test_plain_names_pass(tmp_path, name):
    check_new_file_name(str(tmp_path), name, "_diverged_9999.safetensors")


@pytest.mark.parametrize("name, message", [
    ("x:y*?<>|", "the characters '*' ':' '<' '>' '?' '|' are not allowed in file names on Windows"),
    ('say"hi"', "the characters '\"' are not allowed"),
    ("tab\there", "the characters '\\t' are not allowed"),
    ("runs/CON.safetensors", "'CON.safetensors' is a device name on Windows"),
    ("trailing.", "'trailing.' ends with a space or a dot"),
])
def test_names_windows_cannot_create_are_refused_everywhere(tmp_path, name, message):
    with pytest.raises(ValueError, match=None) as info:
        check_new_file_name(str(tmp_path), name)
    assert message in str(info.value)


def test_a_name_too_long_with_the_ending_the_caller_adds_says_how_long_it_may_be(tmp_path):
    check_new_file_name(str(tmp_path), "n" * 229, "_diverged_9999.safetensors")  # 229 + 26 = 255 bytes: fits
    with pytest.raises(ValueError) as info:
        check_new_file_name(str(tmp_path), "n" * 230, "_diverged_9999.safetensors")
    assert "it is 230 bytes long; with the '_diverged_9999.safetensors' added to it, the file name would be 256 " \
           "bytes, over the 255 this file system allows; shorten it to at most 229 bytes" in str(info.value)
    with pytest.raises(ValueError, match="is 256 bytes long"):  # 128 two-byte characters: bytes count, not letters
        check_new_file_name(str(tmp_path), "é" * 128)


def test_a_drive_prefix_is_refused_as_a_drive_not_as_an_absolute_path(tmp_path):
    with pytest.raises(PathEscapes) as info:
        path_inside(str(tmp_path), "x:y")
    assert "starts with 'x:', a Windows drive" in str(info.value) and "absolute" not in str(info.value)
    with pytest.raises(PathEscapes, match="absolute paths are refused"):
        path_inside(str(tmp_path), "/etc/passwd")
