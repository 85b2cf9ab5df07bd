"""`pilot.load_embedding` gives the prompt embeddings of diffusers' `load_textual_inversion`.

A tiny random pipeline is saved by diffusers (with transformers' tokenizer over CLIP's
vocabulary); the same embedding file, in each format artists share, is loaded by diffusers
(`pipe.load_textual_inversion` + `pipe.encode_prompt`, which expands multi-vector tokens) and by
pilot (`load_pipeline` + `load_embedding` + `encode_text`). Ids and embeddings must be equal.
"""

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import save_file
from sd_references import tiny_diffusers_pipeline

import pilot
from pilot.diffusion.pipeline import encode_text
from pilot.models.tokenizer import CLIPTokenizer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ti")
    pipe = tiny_diffusers_pipeline(root)
    pipe.save_pretrained(root / "sd")
    return root / "sd"


def write_embedding(fmt: str, vectors: torch.Tensor, folder) -> tuple:
    """The file of `vectors` (n, C) in format `fmt`, and the token pilot gives it by default."""
    if fmt == "a1111_pt":  # what A1111's textual inversion training saves
        path = folder / "inkstyle.pt"
        data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.requires_grad_()},
                "name": "inkstyle", "step": 3000, "sd_checkpoint_name": "v1-5"}  # fmt: skip
        torch.save(data, path)
        return path, "inkstyle"
    if fmt == "a1111_safetensors":
        path = folder / "inkstyle.safetensors"
        save_file({"emb_params": vectors}, path)
        return path, "inkstyle"
    # diffusers' textual_inversion.py: {placeholder_token: (C,)} in learned_embeds.safetensors
    (folder / "concept").mkdir()
    save_file({"<ink-style>": vectors[0]}, folder / "concept" / "learned_embeds.safetensors")
    return folder / "concept", "<ink-style>"


@pytest.mark.parametrize(
    "fmt, n", [("a1111_pt", 3), ("a1111_safetensors", 2), ("diffusers", 1)]
)  # fmt: skip
def test_prompt_embeddings_match_diffusers(folder, tmp_path, fmt, n):
    vectors = torch.randn(n, 32, generator=torch.Generator().manual_seed(n))
    path, token = write_embedding(fmt, vectors, tmp_path)
    prompt = f"a photo of {token} in thick fog, {token}"

    ref = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)
    ref.load_textual_inversion(str(path), token=token)
    ref_ids = ref.tokenizer(ref.maybe_convert_prompt(prompt, ref.tokenizer)).input_ids
    ref_embeddings = ref.encode_prompt(prompt, "cpu", 1, False)[0]

    sd = pilot.load_pipeline(folder)
    assert pilot.load_embedding(sd, path) == token
    assert [sd.tokenizer.bos_token_id, *sd.tokenizer.encode(prompt), sd.tokenizer.eos_token_id] == (
        ref_ids
    )
    assert ref_ids.count(len(CLIPTokenizer.default().vocab)) == 2  # the first new id, twice
    embeddings = encode_text(sd, [prompt], [""])[0]
    torch.testing.assert_close(embeddings, ref_embeddings, rtol=0, atol=1e-6)
