"""BLIP-2 captioner and LLM perturber on tiny random models built in code (no download)."""

import numpy as np
import pytest
import torch

from counterfactory.editing.captions import (
    VOCABULARY,
    Blip2Captioner,
    LLMPerturber,
    RulePerturber,
    finetune_llm_perturber,
    single_word_change,
)
from counterfactory.errors import CheckpointError, InputError


def _tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "<unk>", "<image>", ",", "#", ":", "\n"] + sorted(
        set(VOCABULARY) | {"change", "exactly", "one", "attribute", "word", "of", "the", "caption", "to", "its",
                           "opposite", "instruction", "input", "edited"})
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=128)
    fast.save_pretrained(folder)
    return fast, vocab


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("gpt2")
    fast, vocab = _tokenizer(d)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(vocab), n_embd=16, n_layer=1, n_head=2, n_positions=128,
                     bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    GPT2LMHeadModel(cfg).save_pretrained(d, safe_serialization=True)
    return d


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    d = tmp_path_factory.mktemp("blip2")
    fast, vocab = _tokenizer(d)
    cfg = Blip2Config(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        qformer_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            encoder_hidden_size=16, vocab_size=len(vocab)),
        text_config=dict(model_type="opt", vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, ffn_dim=32, word_embed_proj_dim=16, max_position_embeddings=64,
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"]),
        num_query_tokens=2, image_token_index=vocab["<image>"])
    torch.manual_seed(0)
    Blip2ForConditionalGeneration(cfg).save_pretrained(d, safe_serialization=True)
    return d


def test_blip2_captioner_is_deterministic_and_decodes_words(tiny_blip2):
    cap = Blip2Captioner(tiny_blip2, max_new_tokens=4)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    a = cap.caption(imgs)
    assert len(a) == 2 and all(isinstance(c, str) for c in a)
    assert a == cap.caption(imgs)
    assert cap.pixel_values(imgs).shape == (2, 3, 28, 28)
    with pytest.raises(InputError, match=r"^images="):
        cap.caption(np.zeros((2, 2, 28, 28), np.uint8))


def test_missing_folders_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match=r"^captioner=.*nothing is downloaded"):
        Blip2Captioner(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"^model="):
        LLMPerturber(tmp_path / "nope")


def test_single_word_change():
    assert single_word_change("a thick, slanted seven", "a thin, slanted seven") == ("thick", "thin")
    assert single_word_change("a thick seven", "a thin one") is None
    assert single_word_change("a thick seven", "a thick seven") is None


def test_llm_perturber_falls_back_to_rules_on_a_random_model(tiny_gpt2):
    p = LLMPerturber(tiny_gpt2, max_new_tokens=6)
    cap = "a thick, slanted, bright seven"
    out = p.perturb(cap, 0)
    assert p.last_used_fallback  # a random model does not produce a one-word edit
    g = np.random.default_rng(0)
    g.integers(2**31)  # the draw that seeded the model's sampling
    assert out == RulePerturber().perturb(cap, g)
    strict = LLMPerturber(tiny_gpt2, max_new_tokens=6, fallback=False)
    with pytest.raises(InputError, match=r"^caption="):
        strict.perturb(cap, 0)


def test_lora_finetune_teaches_the_edit(tiny_gpt2, tmp_path):
    pairs = [("a thick, slanted, bright seven", "a thin, slanted, bright seven")]
    adapter = finetune_llm_perturber(tiny_gpt2, pairs, tmp_path / "lora", steps=150, lr=3e-2, batch_size=1,
                                     target_modules=("c_attn", "c_proj", "c_fc"))
    assert (adapter / "adapter_model.safetensors").is_file()
    p = LLMPerturber(tiny_gpt2, adapter=adapter, max_new_tokens=8, fallback=False)
    text, cf, changed = p.perturb(pairs[0][0], 0)
    assert cf == "a thin, slanted, bright seven" and changed == ("thick", "thin") and text == "make it thinner"
    with pytest.raises(CheckpointError, match=r"^adapter="):
        LLMPerturber(tiny_gpt2, adapter=tmp_path)
