import pytest
import torch

from counterfactory.errors import InputError
from counterfactory.models.text import WordTokenizer
from counterfactory.models.text2image import Text2ImageModel

from .conftest import tiny_model


def test_tokenizer_one_token_per_word_and_round_trip(tmp_path):
    tok = WordTokenizer.from_words(["a", "thick", "thin", "seven"], max_length=8)
    ids = tok.encode(["a thick, seven", ""])
    assert ids.shape == (2, 8)
    assert tok.split("a thick, seven") == ["a", "thick", ",", "seven"]
    assert tok.word_positions("a thick, seven", "thick") == [2]
    tok.save(tmp_path / "tokenizer.json")
    again = WordTokenizer.load(tmp_path / "tokenizer.json")
    assert torch.equal(again.encode(["a thick, seven", ""]), ids)


def test_unknown_word_is_named():
    tok = WordTokenizer.from_words(["a", "thick", "seven"])
    with pytest.raises(InputError, match=r"prompt=a fat seven: .*unknown: fat"):
        tok.encode("a fat seven")
    with pytest.raises(InputError, match="at most"):
        tok.encode(" ".join(["a"] * 20))


def test_model_save_load_identical(tmp_path):
    m = tiny_model()
    m.save(tmp_path / "m", extra={"steps": 0})
    (tmp_path / "m" / "MODEL_CARD.md").write_text("card")
    m.save(tmp_path / "m")  # a re-export keeps the card
    assert (tmp_path / "m" / "MODEL_CARD.md").read_text() == "card"
    back = Text2ImageModel.load(tmp_path / "m")
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = m.unet(x, 10, encoder_hidden_states=m.encode(["a thick seven", ""])).sample
        b = back.unet(x, 10, encoder_hidden_states=back.encode(["a thick seven", ""])).sample
    assert torch.equal(a, b)
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / "m").rglob("*"))


def test_cross_attention_at_two_resolutions():
    m = tiny_model()
    sizes = set()
    hooks = [mod.register_forward_hook(lambda mod, inp, out: sizes.add(inp[0].shape[1]))
             for name, mod in m.unet.named_modules() if name.endswith("attn2")]
    with torch.no_grad():
        m.unet(torch.zeros(1, 1, 28, 28), 5, encoder_hidden_states=m.encode("a seven"))
    for h in hooks:
        h.remove()
    assert sizes == {14 * 14, 7 * 7}


def test_bad_image_shape_is_named(model):
    with pytest.raises(InputError, match=r"image=\(1, 3, 28, 28\)"):
        model.check_image(torch.zeros(1, 3, 28, 28))
