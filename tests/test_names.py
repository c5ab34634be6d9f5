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
