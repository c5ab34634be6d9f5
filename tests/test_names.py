import pytest

from counterfactory.errors import InputError
from counterfactory.io.names import check_path_name


@pytest.mark.parametrize("bad", ["../../x", "/abs", "..", ".", "", "a/b", "a\\b", "crack\n", 3, None])
def test_names_that_would_escape_a_folder_are_refused(bad):
    with pytest.raises(InputError, match="type_names"):
        check_path_name(bad, "type_names")


@pytest.mark.parametrize("good", ["crack", "MT_Break", "spot-2", "v1.0"])
def test_plain_names_pass(good):
    assert check_path_name(good, "type_names") == good


def test_an_adapter_file_with_a_path_as_type_name_is_refused_at_load(tmp_path):
    import json

    import torch
    from safetensors.torch import save_file

    from counterfactory.models.conditioning import DamageTypeEmbedding

    f = tmp_path / "damage_type_embeddings.safetensors"
    save_file({"embeddings": torch.zeros(1, 4, 8)}, str(f), metadata={"type_names": json.dumps(["../../x"])})
    with pytest.raises(InputError, match=r"type_names='\.\./\.\./x'"):
        DamageTypeEmbedding.load(f)
