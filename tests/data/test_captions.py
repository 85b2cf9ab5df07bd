"""Captions from scene parameters, the caption tokenizer and the captioned render data set."""

import re

import pytest
import torch

from pilot.data.captioned import CaptionedRenders
from pilot.data.captions import (
    build_tokenizer,
    caption_items,
    caption_words,
    colour_name,
    dominant_plane,
    fog_amount,
    learn_merges,
    region_colour,
)
from pilot.data.walls import render_pairs, sample_item
from pilot.models.tokenizer import CLIPTokenizer
from pilot.scenes import materials
from pilot.weights.save import write_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

GRAMMAR = re.compile(
    r"^(\w+) (brick|tile|panel|plaster) (room|corridor|yard), (thin|soft|thick) (\w+) fog$"
)


def test_colour_and_fog_names():
    assert colour_name((0.9, 0.1, 0.1)) == "red"
    assert colour_name((0.1, 0.2, 0.9)) == "blue"
    assert colour_name((0.2, 0.8, 0.2)) == "green"
    assert colour_name((0.9, 0.8, 0.1)) == "yellow"
    assert colour_name((0.5, 0.5, 0.52)) == "grey"
    assert [fog_amount(d) for d in (0.02, 0.1, 0.25)] == ["thin", "soft", "thick"]


def test_dominant_plane_ignores_sky():
    plane = torch.tensor([[[-1, -1, -1], [2, 2, 0]]])
    assert dominant_plane(plane) == 2
    assert dominant_plane(torch.full((1, 2, 2), -1)) == 0


def test_captions_follow_the_grammar_and_the_dominant_plane():
    out = render_pairs(6, 32, seed=3)
    caps = caption_items(3, range(6), out["plane"])
    assert caps == caption_items(3, range(6), out["plane"])  # deterministic
    assert len(set(caps)) > 1
    for i, cap in enumerate(caps):
        m = GRAMMAR.match(cap)
        assert m, cap
        scene = sample_item(3, i)[0]
        row = scene.material[0, dominant_plane(out["plane"][i])]
        assert m.group(1) == colour_name(row[materials.RGB].tolist())
        assert m.group(2) == ("brick", "tile", "panel", "plaster")[int(row[materials.KIND])]
        assert set(cap.replace(",", "").split()) <= set(caption_words())
    with pytest.raises(ValueError, match="2 indices but 6"):
        caption_items(3, range(2), out["plane"])


def test_captions_name_the_colour_as_seen_through_the_fog():
    out = render_pairs(12, 32, seed=4)
    base = caption_items(4, range(12), out["plane"])
    seen = caption_items(4, range(12), out["plane"], images=out["image"])
    for cap_base, cap_seen, image, plane in zip(
        base, seen, out["image"], out["plane"], strict=True
    ):
        assert cap_seen.split()[1:] == cap_base.split()[1:]  # only the colour word may change
        assert cap_seen.split()[0] == region_colour(image, plane[0] == dominant_plane(plane))
    # A red wall seen through thick white fog is grey; nothing fogged stays the base colour.
    assert (
        region_colour(
            torch.tensor([0.9, 0.1, 0.1])[:, None, None].expand(3, 4, 4),
            torch.ones(4, 4, dtype=torch.bool),
        )
        == "red"
    )
    fogged = torch.lerp(torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.9, 0.9, 0.9]), 0.9)
    assert (
        region_colour(fogged[:, None, None].expand(3, 4, 4), torch.zeros(4, 4, dtype=torch.bool))
        == "grey"
    )
    with pytest.raises(ValueError, match="3 images but 12"):
        caption_items(4, range(12), out["plane"], images=out["image"][:3])


def test_learned_merges_keep_tricky_words_whole():
    words = ["aaa", "aa", "abab", "ab", "b"]
    tok = build_tokenizer(words)
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"]
    assert len(learn_merges(words)) == len(set(learn_merges(words)))
    with pytest.raises(ValueError, match="one symbol"):
        build_tokenizer(["two words"])


def test_caption_tokenizer_one_id_per_word_and_round_trip(tmp_path):
    tok = build_tokenizer()
    cap = "red brick corridor, thick blue fog"
    ids = tok.encode(cap)
    assert len(ids) == 7 and len(set(ids)) == 7  # 6 words and the comma
    assert tok.decode(tok([cap])[0]) == cap.replace(",", " ,")  # CLIP decodes "x</w>" as "x "
    assert tok.eos_token_id not in tok.encode("a zebra!")  # other text: bytes, no unknowns
    write_tokenizer(tok, tmp_path / "tokenizer")
    again = CLIPTokenizer.from_folder(tmp_path / "tokenizer")
    assert torch.equal(again([cap, ""]), tok([cap, ""]))
    transformers = pytest.importorskip("transformers")
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path / "tokenizer"))
    hf_ids = hf([cap, ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert torch.equal(hf_ids, tok([cap, ""]))


def test_captioned_renders_deterministic_and_offset():
    full = CaptionedRenders(5, 16, seed=1)
    tail = CaptionedRenders(3, 16, seed=1, start=2)
    assert torch.equal(full[3]["image"], tail[1]["image"])
    assert full[3]["caption"] == tail[1]["caption"] and tail[1]["index"] == 3
    item = full[0]
    assert item["image"].shape == (3, 16, 16) and item["depth"].shape == (1, 16, 16)
    assert -1 <= item["image"].min() and item["image"].max() <= 1
    assert 0 <= item["control"].min() and item["control"].max() == 1  # nearest surface bright
    with pytest.raises(ValueError, match="multiple of 8"):
        CaptionedRenders(2, 12, seed=0)
