"""A1111 emphasis parsing, 77-token chunking and weighted prompt encoding."""

import pytest
import torch

from pilot.diffusion.prompts import (
    CHUNK_TOKENS,
    WeightedText,
    count_chunks,
    encode_prompts,
    parse_emphasis,
    tokenize_chunks,
)
from pilot.models.tokenizer import CLIPTokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.default()


def weights_of(prompt: str) -> dict[str, float]:
    return {r.text.strip(): round(r.weight, 6) for r in parse_emphasis(prompt) if r.text}


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a red wall", {"a red wall": 1.0}),
        ("a (red) wall", {"a": 1.0, "red": 1.1, "wall": 1.0}),
        ("a ((red)) wall", {"a": 1.0, "red": 1.21, "wall": 1.0}),
        ("a [red] wall", {"a": 1.0, "red": round(1 / 1.1, 6), "wall": 1.0}),
        ("a (red:1.5) wall", {"a": 1.0, "red": 1.5, "wall": 1.0}),
        ("a (red: 0.5 ) wall", {"a": 1.0, "red": 0.5, "wall": 1.0}),
        ("((red:2) brick)", {"red": 2.2, "brick": 1.1}),
        ("(red [brick])", {"red": 1.1, "brick": 1.0}),
        ("a (unclosed wall", {"a": 1.0, "unclosed wall": 1.1}),
        (r"a \(literal\) wall", {"a (literal) wall": 1.0}),
        ("a stray) wall", {"a stray) wall": 1.0}),
        ("ratio 16:9, (Blue:1.2)", {"ratio 16:9,": 1.0, "Blue": 1.2}),
    ],
)
def test_parse_emphasis(prompt, expected):
    assert weights_of(prompt) == expected


def test_break_and_empty():
    runs = parse_emphasis("red wall BREAK blue fog")
    assert [r.text for r in runs] == ["red wall ", None, " blue fog"]
    assert parse_emphasis("") == [WeightedText("", 1.0)]
    assert [r.text for r in parse_emphasis("BREAKFAST")] == ["BREAKFAST"]


def test_short_prompt_chunk_equals_tokenizer(tokenizer):
    prompt = "a red brick corridor, thick blue fog"
    ids, weights = tokenize_chunks(tokenizer, prompt)
    assert ids == tokenizer([prompt]).tolist()
    assert weights == [[1.0] * 77]


def test_long_prompt_chunks(tokenizer):
    prompt = " ".join(["wall"] * 100)  # 100 tokens -> 75 + 25
    ids, weights = tokenize_chunks(tokenizer, prompt)
    assert len(ids) == 2 and all(len(row) == 77 for row in ids)
    wall = tokenizer.encode("wall")[0]
    assert ids[0][1:76] == [wall] * CHUNK_TOKENS and ids[0][76] == tokenizer.eos_token_id
    assert ids[1][1:26] == [wall] * 25 and ids[1][26] == tokenizer.eos_token_id
    assert count_chunks(tokenizer, [prompt, "a cat"]) == 2


def test_break_starts_a_chunk_and_weights_follow_tokens(tokenizer):
    ids, weights = tokenize_chunks(tokenizer, "red (wall:1.4) BREAK fog")
    assert len(ids) == 2
    red, wall, fog = (tokenizer.encode(w)[0] for w in ("red", "wall", "fog"))
    assert ids[0][:4] == [tokenizer.bos_token_id, red, wall, tokenizer.eos_token_id]
    assert weights[0][:4] == [1.0, 1.0, 1.4, 1.0]
    assert ids[1][:3] == [tokenizer.bos_token_id, fog, tokenizer.eos_token_id]


class MeanText(torch.nn.Module):
    """A stand-in text encoder with a clearly nonzero mean: embedding + 1."""

    def __init__(self, vocab: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, 8)
        torch.nn.init.uniform_(self.embed.weight, 0.5, 1.5)

    def forward(self, ids, *, skip=0):
        return self.embed(ids)


def test_encode_plain_prompt_is_the_text_encoder_output(tokenizer):
    text = MeanText(len(tokenizer.vocab))
    z = encode_prompts(text, tokenizer, ["a red wall", "fog"])
    assert torch.equal(z, text(tokenizer(["a red wall", "fog"])))


def test_encode_weighted_keeps_mean_and_batch_independence(tokenizer):
    text = MeanText(len(tokenizer.vocab))
    plain = encode_prompts(text, tokenizer, ["a red wall"])
    weighted = encode_prompts(text, tokenizer, ["a (red:1.5) wall"])
    assert torch.allclose(weighted.mean(), plain.mean(), rtol=1e-5)
    red = 2  # BOS, a, red
    ratio = weighted[0, red] / plain[0, red]
    assert torch.allclose(ratio, torch.full_like(ratio, ratio[0].item()))
    assert ratio[0] > 1.4  # 1.5 times, then rescaled by a mean ratio close to 1
    batch = encode_prompts(text, tokenizer, ["a (red:1.5) wall", "(fog:0.5)"])
    assert torch.allclose(batch[:1], weighted, atol=1e-6)


def test_encode_pads_to_min_chunks(tokenizer):
    text = MeanText(len(tokenizer.vocab))
    z = encode_prompts(text, tokenizer, ["a cat"], min_chunks=3)
    assert z.shape == (1, 3 * 77, 8)
    empty = text(tokenizer([""]))
    assert torch.equal(z[:, 77:154], empty) and torch.equal(z[:, 154:], empty)
