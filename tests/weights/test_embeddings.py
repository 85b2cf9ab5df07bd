"""`pilot.load_embedding`: textual inversion tokens in prompts, and one-line errors naming the file
(parity with diffusers: tests/parity/test_embedding_parity.py)."""

import pytest
import torch
from safetensors.torch import save_file

import pilot
from pilot.diffusion.pipeline import encode_text
from pilot.weights.io import WeightsError
from tests.conftest import make_tiny_sd

WIDTH = 32  # the tiny text encoder's


@pytest.fixture
def sd():
    return make_tiny_sd()


def a1111_pt(path, vectors):
    torch.save(
        {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors}, "name": "x"}, path
    )
    return path


def test_the_token_is_the_stem_in_any_case_and_whole_words_only(sd, tmp_path):
    path = a1111_pt(tmp_path / "InkStyle.pt", torch.randn(2, WIDTH))
    assert pilot.load_embedding(sd, path) == "InkStyle"
    first = sd.text_encoder.cfg.vocab_size - 2
    assert sd.text_encoder.cfg.vocab_size == 49408 + 2 == len(sd.tokenizer.vocab)
    tok = sd.tokenizer
    assert tok.encode("INKSTYLE, inkstyle") == [
        first,
        first + 1,
        tok.vocab[",</w>"],
        first,
        first + 1,
    ]
    assert first not in tok.encode("inkstyles") + tok.encode("an inkstyle2")  # other words
    assert tok.decode(tok("an inkstyle cat")[0]) == "an inkstyle inkstyle_1 cat"
    weight = sd.text_encoder.embeddings.token_embedding.weight
    assert torch.equal(weight[first:], torch.load(path)["string_to_param"]["*"])
    # emphasis applies to the token's vectors as to any word's
    plain, weighted = (encode_text(sd, [p], [""])[0] for p in ("inkstyle", "(inkstyle:1.5)"))
    assert not torch.equal(plain, weighted)


def test_two_embeddings_take_consecutive_ids_and_keep_the_dtype(sd, tmp_path):
    sd.to(dtype=torch.float64)
    save_file({"emb_params": torch.randn(1, WIDTH)}, tmp_path / "zq-style.safetensors")
    save_file({"<b>": torch.randn(WIDTH)}, tmp_path / "learned_embeds.safetensors")
    assert pilot.load_embedding(sd, tmp_path / "zq-style.safetensors") == "zq-style"
    assert pilot.load_embedding(sd, tmp_path / "learned_embeds.safetensors") == "<b>"
    assert sd.tokenizer.encode("zq-style <b>") == [49408, 49409]
    assert sd.text_encoder.embeddings.token_embedding.weight.dtype == torch.float64
    assert pilot.load_embedding(sd, tmp_path / "zq-style.safetensors", token="zq2") == "zq2"


@pytest.mark.parametrize(
    "name, token, message",
    [
        ("cat.pt", None, "token 'cat' is already in the vocabulary"),  # a word
        ("x.pt", "Photo", "token 'Photo' is already in the vocabulary"),
        ("inkstyle.pt", None, "token 'inkstyle' is already in the vocabulary"),  # loaded before
    ],
)
def test_a_token_in_the_vocabulary_is_refused(sd, tmp_path, name, token, message):
    a1111_pt(tmp_path / "inkstyle.pt", torch.randn(1, WIDTH))
    pilot.load_embedding(sd, tmp_path / "inkstyle.pt")
    path = a1111_pt(tmp_path / name, torch.randn(1, WIDTH))
    with pytest.raises(WeightsError, match=f"^{path}: {message}.*rename the file") as info:
        pilot.load_embedding(sd, path, token=token)
    assert "\n" not in str(info.value)
    assert sd.text_encoder.cfg.vocab_size == len(sd.tokenizer.vocab) == 49409  # unchanged


def test_wrong_width_is_refused_naming_file_and_dims(sd, tmp_path):
    path = a1111_pt(tmp_path / "sd2-style.pt", torch.randn(2, 1024))
    with pytest.raises(WeightsError) as info:
        pilot.load_embedding(sd, path)
    assert str(info.value) == (
        f"{path}: a 1024-d embedding (SD 2.x), but this model's text encoder takes 32-d vectors"
    )
    assert len(sd.tokenizer.vocab) == 49408


@pytest.mark.parametrize(
    "data, message",
    [
        ({"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}, "an SDXL embedding"),
        (
            {"lora_unet_a.alpha": torch.ones(()), "lora_unet_a.lora_up.weight": torch.ones(2, 2)},
            "not a textual inversion embedding",
        ),  # fmt: skip
        (
            {"emb_params": torch.ones(2, 3, 4)},
            r"the embedding is a torch.float32 tensor of shape \(2, 3, 4\)",
        ),
    ],
)
def test_files_that_hold_no_embedding_are_named(sd, tmp_path, data, message):
    path = tmp_path / "thing.safetensors"
    save_file(data, path)
    with pytest.raises(WeightsError, match=f"^{path}: {message}"):
        pilot.load_embedding(sd, path)


def test_a_saved_pipeline_keeps_its_embeddings(sd, tmp_path):
    from transformers import CLIPTokenizer as HFTokenizer

    from pilot.weights.save import save_pipeline

    pilot.load_embedding(sd, a1111_pt(tmp_path / "inkstyle.pt", torch.randn(3, WIDTH)))
    save_file({"<b>": torch.randn(WIDTH)}, tmp_path / "learned_embeds.safetensors")
    pilot.load_embedding(sd, tmp_path / "learned_embeds.safetensors")
    folder = save_pipeline(sd, tmp_path / "saved")
    again = pilot.load_pipeline(folder)
    prompt = "<b> in inkstyle, fog"
    assert again.tokenizer.encode(prompt) == sd.tokenizer.encode(prompt)
    assert again.tokenizer.added_tokens == sd.tokenizer.added_tokens
    assert torch.equal(encode_text(again, [prompt], [""])[0], encode_text(sd, [prompt], [""])[0])
    # transformers reads the tokens too (diffusers expands inkstyle into its 3 names)
    hf = HFTokenizer.from_pretrained(folder / "tokenizer")
    expanded = "<b> in inkstyle inkstyle_1 inkstyle_2, fog"
    assert hf(expanded).input_ids[1:-1] == sd.tokenizer.encode(prompt)


def test_an_old_a1111_file_with_a_parameter_dict_loads(sd, tmp_path):
    """The original textual_inversion repo and early A1111 pickled `string_to_param` as an
    nn.ParameterDict: read with weights_only and that one class allowed."""
    vectors = torch.randn(2, WIDTH)
    path = tmp_path / "OldStyle.pt"
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())}),
        "name": "OldStyle",
        "step": 3000,
        "sd_checkpoint": "7460a6fa",
        "sd_checkpoint_name": "sd-v1-4",
    }
    torch.save(data, path)
    assert pilot.load_embedding(sd, path) == "OldStyle"
    weight = sd.text_encoder.embeddings.token_embedding.weight
    assert torch.equal(weight[-2:], vectors)


def test_any_other_class_in_a_pickle_is_refused_naming_it(sd, tmp_path):
    path = tmp_path / "other.pt"
    params = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(1, WIDTH))])
    torch.save({"string_to_param": {"*": params}}, path)
    with pytest.raises(WeightsError) as info:
        pilot.load_embedding(sd, path)
    message = str(info.value)
    assert message.startswith(f"{path}: holds pickled code or unsafe objects")
    assert "torch.nn.modules.container.ParameterList" in message
    assert "\n" not in message and "Please use" not in message  # no advice to allow-list it
