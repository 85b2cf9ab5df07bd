"""Unit tests of the CLIP text encoder, its config and the CLIP BPE tokenizer."""

import dataclasses
import json

import pytest
import torch

from pilot.models.clip import CLIP_PRESETS, CLIPTextConfig, CLIPTextModel
from pilot.models.tokenizer import CLIPTokenizer, bytes_to_unicode, clean_text, split_pieces

# text_encoder/config.json of the SD 1.5 and SD 2.1 diffusers repos (transformers 4.2x era).
SD15_CONFIG = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}
SD21_CONFIG = {
    **SD15_CONFIG,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer.default()


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sd15", "sd21", "tiny"])
def test_presets_round_trip_through_transformers_dict(name):
    cfg = CLIP_PRESETS[name]
    assert CLIPTextConfig.from_transformers(cfg.to_transformers()) == cfg


def test_from_transformers_reads_sd_configs():
    assert CLIPTextConfig.from_transformers(SD15_CONFIG) == CLIP_PRESETS["sd15"]
    assert CLIPTextConfig.from_transformers(SD21_CONFIG) == CLIP_PRESETS["sd21"]
    full = {"model_type": "clip", "text_config": SD15_CONFIG, "vision_config": {}}
    assert CLIPTextConfig.from_transformers(full) == CLIP_PRESETS["sd15"]


def test_from_transformers_fills_transformers_defaults():
    cfg = CLIPTextConfig.from_transformers({"hidden_size": 64, "num_attention_heads": 4})
    assert (cfg.num_layers, cfg.intermediate_size, cfg.eos_token_id) == (12, 2048, 49407)


@pytest.mark.parametrize(
    "key, value",
    [
        ("hidden_act", "gelu_new"),
        ("eos_token_id", [2, 49407]),
        ("num_attention_heads", 5),
        ("model_type", "clip_vision_model"),
    ],
)
def test_from_transformers_rejects_unsupported_values(key, value):
    with pytest.raises(ValueError, match=key.replace("num_attention_heads", "num_heads")):
        CLIPTextConfig.from_transformers({**SD15_CONFIG, key: value})


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"hidden_size": 30}, "num_heads"),
        ({"num_layers": 0}, "num_layers"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
    ],
)
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(CLIP_PRESETS["tiny"], **changes)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CLIP_PRESETS["tiny"].num_layers = 4


# --- text encoder -----------------------------------------------------------------------------


def test_state_dict_keys_are_transformers_keys_without_prefix():
    cfg = CLIP_PRESETS["tiny"]
    keys = set(CLIPTextModel(cfg).state_dict())
    modules = [f"self_attn.{p}_proj" for p in ("q", "k", "v", "out")]
    modules += ["layer_norm1", "mlp.fc1", "mlp.fc2", "layer_norm2"]
    layer = [f"{m}.{w}" for m in modules for w in ("weight", "bias")]
    want = {"embeddings.token_embedding.weight", "embeddings.position_embedding.weight"}
    want |= {f"encoder.layers.{i}.{k}" for i in range(cfg.num_layers) for k in layer}
    want |= {"final_layer_norm.weight", "final_layer_norm.bias"}
    assert keys == want


def test_forward_shapes_and_causality():
    cfg = CLIP_PRESETS["tiny"]
    model = CLIPTextModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 77))
    other = ids.clone()
    other[:, 10:] = torch.randint(0, cfg.vocab_size, (2, 67))
    with torch.no_grad():
        hidden = model(ids)
        assert hidden.shape == (2, 77, cfg.hidden_size)
        torch.testing.assert_close(model(other)[:, :10], hidden[:, :10])  # no peeking ahead
        torch.testing.assert_close(model(ids[:, :10]), hidden[:, :10])  # shorter T works
        assert model(ids, skip=cfg.num_layers - 1).shape == hidden.shape


def test_skip_is_final_norm_of_earlier_layer():
    cfg = CLIP_PRESETS["tiny"]
    model = CLIPTextModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 77))
    with torch.no_grad():
        x = model.embeddings(ids)
        for layer in model.encoder.layers[:-1]:
            x = layer(x)
        torch.testing.assert_close(model(ids, skip=1), model.final_layer_norm(x))


@pytest.mark.parametrize("skip", [-1, 3])
def test_forward_rejects_bad_skip(skip):
    model = CLIPTextModel(CLIP_PRESETS["tiny"])
    with pytest.raises(ValueError, match="skip"):
        model(torch.zeros(1, 77, dtype=torch.long), skip=skip)


def test_forward_rejects_too_long_input():
    model = CLIPTextModel(CLIP_PRESETS["tiny"])
    with pytest.raises(ValueError, match="77"):
        model(torch.zeros(1, 78, dtype=torch.long))


def test_bf16_forward_follows_parameters():
    cfg = CLIP_PRESETS["tiny"]
    model = CLIPTextModel(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 77))
    with torch.no_grad():
        want = model(ids)
        got = model.to(torch.bfloat16)(ids)
    assert got.dtype == torch.bfloat16
    assert ((got.float() - want).abs().max() / want.abs().max()).item() < 0.05


def test_pool_picks_eos_position():
    legacy = dataclasses.replace(CLIP_PRESETS["tiny"], eos_token_id=2)  # argmax rule
    ids = torch.tensor([[998, 5, 6, 999, 999], [998, 999, 0, 0, 0]])
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    want = torch.stack([hidden[0, 3], hidden[1, 1]])
    for cfg in (CLIP_PRESETS["tiny"], legacy):
        torch.testing.assert_close(CLIPTextModel(cfg).pool(hidden, ids), want)


def test_meta_construction_and_assign_load():
    cfg = CLIP_PRESETS["tiny"]
    state = CLIPTextModel(cfg).state_dict()
    with torch.device("meta"):
        model = CLIPTextModel(cfg)
    result = model.load_state_dict(state, assign=True, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert model(torch.zeros(1, 77, dtype=torch.long)).device.type == "cpu"


# --- tokenizer --------------------------------------------------------------------------------


def test_vocabulary_layout(tok):
    assert len(tok.vocab) == 49408
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (49406, 49407, 49407)
    assert tok.model_max_length == 77
    chars = list(bytes_to_unicode().values())
    assert tok.vocab[chars[0]] == 0 and tok.vocab[chars[0] + "</w>"] == 256
    assert sorted(bytes_to_unicode()) == list(range(256)) and len(set(chars)) == 256


def test_call_layout(tok):
    ids = tok(["a photo of a cat", ""])
    assert ids.dtype == torch.long and ids.shape == (2, 77)
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[1, :2].tolist() == [49406, 49407]
    assert (ids[:, 7:] == 49407).all()
    assert tok("a photo of a cat").shape == (1, 77)
    assert tok([]).shape == (0, 77)


def test_sd2_padding_with_exclamation_mark():
    tok = CLIPTokenizer.default(pad_token="!")
    ids = tok("a photo of a cat!")
    assert tok.pad_token_id == 0
    assert ids[0, :9].tolist() == [49406, 320, 1125, 539, 320, 2368, 256, 49407, 0]
    assert (ids[0, 8:] == 0).all()


def test_truncation_keeps_bos_and_eos(tok):
    prompt = " ".join(["cat"] * 100)
    assert len(tok.encode(prompt)) == 100  # encode does not truncate (long-prompt chunking)
    ids = tok(prompt)[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] == 2368).all()


def test_encode_has_no_special_tokens(tok):
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    assert tok.encode("") == []


def test_cleanup(tok):
    assert clean_text("  Tom &amp;amp; JERRY\n\n ") == "tom & jerry"
    assert clean_text("&amp;", unescape_html=False) == "&amp;"
    assert clean_text("e\u0301") == "é"  # NFC
    assert tok.encode("Cat  \t\n CAT") == tok.encode("cat cat")


def test_pre_tokenisation_splits_like_clip():
    assert split_pieces("it's x²y 12 a_b (word:1.3)") == [
        *("it", "'s", "x", "²", "y", "1", "2", "a", "_", "b", "(", "word", ":", "1", ".", "3", ")"),
    ]
    assert split_pieces("café 東京 🐱🐶 <|endoftext|>") == ["café", "東京", "🐱🐶", "<|endoftext|>"]


def test_typed_special_tokens_map_to_their_ids(tok):
    assert tok.encode("hi <|endoftext|>") == [1883, 49407]


def test_decode(tok):
    prompt = "a café with 🐱, (masterpiece:1.2)!"
    ids = tok(prompt)[0]
    assert tok.decode(ids) == "a café with 🐱, ( masterpiece : 1 . 2 )!"
    assert tok.decode(tok.encode("cat")) == "cat"
    full = tok.decode(ids[:4], skip_special_tokens=False)
    assert full.startswith("<|startoftext|>a café")


def test_bpe_cache_is_used(tok):
    tok.encode("unbelievably")
    assert "unbelievably" in tok._cache


def test_from_folder_sd_layout(tok, tmp_path):
    """A diffusers SD 2 tokenizer folder: vocab.json, merges.txt, pad "!" as an AddedToken dict."""
    (tmp_path / "vocab.json").write_text(json.dumps(tok.vocab), encoding="utf-8")
    merges = sorted(tok.ranks, key=tok.ranks.__getitem__)
    text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (tmp_path / "merges.txt").write_text(text, encoding="utf-8")
    special = {"pad_token": {"content": "!", "lstrip": False}, "eos_token": "<|endoftext|>"}
    (tmp_path / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    loaded = CLIPTokenizer.from_folder(tmp_path)
    assert loaded.pad_token_id == 0
    prompt = "an astronaut riding a horse"
    torch.testing.assert_close(loaded(prompt), CLIPTokenizer.default(pad_token="!")(prompt))
    (tmp_path / "special_tokens_map.json").unlink()
    assert CLIPTokenizer.from_folder(tmp_path).pad_token_id == 49407


def test_unknown_pad_token_is_rejected():
    with pytest.raises(ValueError, match="<pad>"):
        CLIPTokenizer.default(pad_token="<pad>")


def test_from_folder_without_vocabulary(tmp_path):
    with pytest.raises(FileNotFoundError):
        CLIPTokenizer.from_folder(tmp_path)
