"""Parity of pilot's CLIP tokenizer and text encoder with transformers and open_clip."""

import dataclasses
import gzip
import html
import importlib.resources
import json
import unicodedata

import ftfy
import open_clip.tokenizer
import pytest
import torch
import transformers
from safetensors.torch import load_file

from pilot.models.clip import CLIP_PRESETS, CLIPTextConfig, CLIPTextModel
from pilot.models.tokenizer import CLIPTokenizer

# Prompts as users type them: A1111 emphasis and alternation, unicode, emoji, HTML entities, odd
# whitespace, numbers, contractions, CJK, and prompts past the 75-token limit.
PROMPTS = [
    "",
    "a photo of a cat",
    "A Photo Of A CAT",
    "an astronaut riding a horse on mars, highly detailed, 8k, artstation",
    "masterpiece, best quality, (ultra-detailed:1.3), 1girl, solo, looking at viewer",
    "((masterpiece)), [[blurry]], (red hair:0.8), {fluffy}",
    "a [cat|dog] sitting on a [sofa:bed:0.5]",
    "portrait of a woman, by greg rutkowski and alphonse mucha, trending on artstation",
    "café au lait on a table in paris, crème brûlée, naïve art",
    "Übermensch über alles, Straße, smörgåsbord, ñandú",
    "a cute corgi 🐶 wearing sunglasses 😎, emoji style 🎉🎉",
    "sunset — golden hour – cinematic lighting … bokeh",
    "the cat's hat isn't red; they're sure we'll see, I'd say you've I'm",
    "ROCK 'N' ROLL, it's 1970's",
    "a dog &amp; a cat, tom &amp;amp; jerry, &lt;3 &gt;&gt;",
    "fish &quot;n&quot; chips &#39;tasty&#39; &#x27;hex&#x27; &nbsp;space",
    "a   lot    of     spaces",
    "line one\nline two\n\n\tindented\r\nwindows line",
    "   leading and trailing whitespace   ",
    "一只可爱的猫, 山水画, 水墨",
    "東京の夜景、ネオン、サイバーパンク",
    "서울의 밤거리, 네온사인",
    "Москва зимой, красная площадь, снег",
    "Αθήνα, ακρόπολη, ηλιοβασίλεμα",
    "مدينة عربية قديمة في الصحراء",
    "हिमालय के पहाड़, सूर्योदय",
    "numbers 0123456789 and 3.14159 and 1,000,000 and 2024-01-01",
    "1920x1080, 4k, f/1.8, 50mm, iso 100, 1/250s",
    "h₂o molecule, x² + y² = z², ½ cup, ⅓ slice, Ⅻ roman clock",
    "email@example.com https://example.com/path?q=1&x=2#frag",
    "snake_case_words and __dunder__ and under_score",
    "hashtags #aiart #stablediffusion @artist",
    "brackets <lora:detail:0.7> <hypernet:anime:1>",
    "math: a+b=c, 50% off, $100, €20, £5, ¥1000",
    "quotes \"double\" and 'single' and `back`",
    "ellipsis... and !!! and ??? and ?!",
    "wow! so cool!! a cat!",
    "ALL CAPS SHOUTING PROMPT WITH NUMBERS 123",
    "MiXeD CaSe WoRdS and camelCaseIdentifier",
    "hyphen-ated well-known state-of-the-art",
    "trailing punctuation.",
    "  ,  ,  , weird , separators ,,, ;; ::",
    "tab\tseparated\tvalues",
    "non\u00a0breaking\u00a0space and ideographic\u3000space",
    "zero\u200bwidth joiner\u200d test",
    "combining e\u0301 and precomposed é",
    "skin tone emoji 👍🏽 and flag 🇫🇷 and family 👨‍👩‍👧",
    "math symbols ∞ ≈ ≠ ± × ÷ √ ∑ ∫",
    "arrows → ← ↑ ↓ ⇒ and boxes ■ □ ▲",
    "currency ₿ ₹ ₽ and trademark ™ © ®",
    "a" * 50,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "low quality, worst quality, bad anatomy, bad hands, text, error, missing fingers, extra "
    "digit, fewer digits, cropped, jpeg artifacts, signature, watermark, username, blurry, "
    "artist name, deformed, disfigured, mutation, mutated, extra limbs, ugly, poorly drawn hands",
    " ".join(f"word{i}" for i in range(100)),
    "a beautiful landscape painting of a mountain lake at dawn, mist over the water, pine trees, "
    "snow capped peaks, reflections, soft light, by albert bierstadt and thomas cole, hudson "
    "river school, oil on canvas, highly detailed, dramatic sky, volumetric light, 8k uhd, "
    "award winning, masterpiece, trending on artstation, featured on behance",
]

# Prompts where ftfy (run by open_clip, not by pilot) changes the text: curly quotes, ligatures,
# full-width forms. They are compared against transformers but not against open_clip.
FTFY_PROMPTS = ["Monet’s garden, “impressionism”", "ﬁne art, ﬂowers", "ｆｕｌｌ　ｗｉｄｔｈ"]


def _unescape(text):
    """HTML unescaping (twice) and whitespace collapsing, as both CLIP and pilot do."""
    return " ".join(html.unescape(html.unescape(text)).split())


def _reference_ids(tok, prompts):
    """transformers' tokenizer call as the SD pipelines make it."""
    out = tok(prompts, padding="max_length", max_length=77, truncation=True)
    return torch.tensor(out.input_ids)


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory):
    """vocab.json + merges.txt built from open_clip's gz the way CLIP builds its vocabulary."""
    lines = gzip.open(open_clip.tokenizer.default_bpe(), "rt", encoding="utf-8").read()
    merges = [tuple(m.split()) for m in lines.split("\n")[1 : 49152 - 256 - 2 + 1]]
    chars = list(open_clip.tokenizer.bytes_to_unicode().values())
    symbols = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(symbols)) == 49408
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    vocab = {s: i for i, s in enumerate(symbols)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_txt = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (folder / "merges.txt").write_text(merges_txt, encoding="utf-8")
    return folder


def test_shipped_vocabulary_is_open_clips():
    shipped = importlib.resources.files("pilot.models") / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    with open(open_clip.tokenizer.default_bpe(), "rb") as f:
        assert shipped.read_bytes() == f.read()


def test_prompt_list_is_large_enough():
    assert len(PROMPTS) + len(FTFY_PROMPTS) >= 50


@pytest.mark.parametrize("pad_token", ["<|endoftext|>", "!"])
def test_tokenizer_matches_transformers(clip_files, pad_token):
    prompts = PROMPTS + FTFY_PROMPTS
    if pad_token == "!":  # see test_sd2_exclamation_marks_follow_open_clip
        prompts = [p for p in prompts if "!" not in p]
    ref = transformers.CLIPTokenizer.from_pretrained(clip_files, pad_token=pad_token)
    want = _reference_ids(ref, prompts)
    from_files = CLIPTokenizer.from_files(
        clip_files / "vocab.json", clip_files / "merges.txt", pad_token=pad_token
    )
    from_gz = CLIPTokenizer.from_bpe_gz(open_clip.tokenizer.default_bpe(), pad_token=pad_token)
    assert from_files.vocab == from_gz.vocab
    for tok in (from_files, from_gz):
        assert tok.pad_token_id == ref.pad_token_id
        assert (tok.bos_token_id, tok.eos_token_id) == (ref.bos_token_id, ref.eos_token_id)
        # transformers does not unescape HTML entities: compare them unescaped on its side.
        unescaped = [_unescape(p) for p in prompts]
        torch.testing.assert_close(tok(prompts), _reference_ids(ref, unescaped), rtol=0, atol=0)
        tok.unescape_html = False
        torch.testing.assert_close(tok(prompts), want, rtol=0, atol=0)


def test_tokenizer_matches_open_clip():
    """open_clip's tokenizer is SD 2's: ftfy + HTML unescape, zero padding (pad token "!")."""
    tok = CLIPTokenizer.default(pad_token="!")
    ref = open_clip.tokenizer.SimpleTokenizer()
    for p in FTFY_PROMPTS:
        assert _unescape(ftfy.fix_text(p)) != _unescape(unicodedata.normalize("NFC", p))
    for p in PROMPTS:
        assert _unescape(ftfy.fix_text(p)) == _unescape(unicodedata.normalize("NFC", p)), p
    torch.testing.assert_close(tok(PROMPTS), ref(PROMPTS), rtol=0, atol=0)


def test_sd2_exclamation_marks_follow_open_clip(clip_files):
    """transformers registers SD 2's pad token "!" as a special token and so splits every "!" of a
    prompt off as id 0; CLIP's BPE (open_clip, which SD 2 was trained with) gives "!</w>" (256)."""
    prompt = "wow!!! a cat!"
    ref = transformers.CLIPTokenizer.from_pretrained(clip_files, pad_token="!")
    assert _reference_ids(ref, prompt)[:7].tolist() == [49406, 2781, 0, 0, 0, 320, 2368]
    want = open_clip.tokenizer.SimpleTokenizer()([prompt])
    assert want[0, :7].tolist() == [49406, 2781, 995, 320, 2368, 256, 49407]
    torch.testing.assert_close(CLIPTokenizer.default(pad_token="!")(prompt), want, rtol=0, atol=0)


def test_decode_matches_transformers(clip_files):
    ref = transformers.CLIPTokenizer.from_pretrained(clip_files)
    tok = CLIPTokenizer.default(unescape_html=False)
    for ids in _reference_ids(ref, PROMPTS).tolist():
        assert tok.decode(ids) == ref.decode(ids, skip_special_tokens=True)


def test_from_folder_reads_transformers_save(clip_files, tmp_path):
    """transformers >= 5 saves tokenizer.json + tokenizer_config.json only."""
    ref = transformers.CLIPTokenizer.from_pretrained(clip_files, pad_token="!")
    ref.save_pretrained(tmp_path)
    tok = CLIPTokenizer.from_folder(tmp_path, unescape_html=False)
    assert tok.pad_token_id == 0
    prompts = [p for p in PROMPTS if "!" not in p]
    torch.testing.assert_close(tok(prompts), _reference_ids(ref, prompts), rtol=0, atol=0)


def _perturbed_reference(cfg, tmp_path):
    """A seeded random transformers CLIPTextModel, saved and reloaded into pilot's model."""
    torch.manual_seed(0)
    ref = transformers.CLIPTextModel(transformers.CLIPTextConfig(**cfg.to_transformers()))
    with torch.no_grad():
        for p in ref.parameters():  # LayerNorms start at (1, 0) and biases at 0 otherwise
            p.add_(0.02 * torch.randn_like(p))
    ref.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    model = CLIPTextModel(cfg)
    model.load_state_dict({k.removeprefix("text_model."): v for k, v in state.items()}, strict=True)
    return ref.eval(), model.eval()


def _prompt_ids(cfg, batch=3):
    """BOS, random tokens, EOS and EOS padding, with prompts of different lengths."""
    bos, eos = cfg.vocab_size - 2, cfg.vocab_size - 1
    ids = torch.randint(0, cfg.vocab_size - 2, (batch, cfg.max_position_embeddings))
    ids[:, 0] = bos
    for b, length in enumerate(torch.linspace(5, cfg.max_position_embeddings - 1, batch).long()):
        ids[b, length:] = eos
    return ids


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize(
    "name, num_layers",
    [
        ("tiny", None),
        ("sd15", 2),
        ("sd21", 2),
        pytest.param("sd15", None, marks=pytest.mark.slow),
        pytest.param("sd21", None, marks=pytest.mark.slow),
    ],
)
def test_text_encoder_matches_transformers(name, num_layers, tmp_path):
    cfg = CLIP_PRESETS[name]
    if num_layers is not None:  # preset widths, fewer layers to keep the test fast
        cfg = dataclasses.replace(cfg, num_layers=num_layers)
    ref, model = _perturbed_reference(cfg, tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert CLIPTextConfig.from_transformers(saved) == cfg
    ids = _prompt_ids(cfg)
    with torch.no_grad():
        out = ref(ids, output_hidden_states=True)
        hidden = model(ids)
        assert _rel_err(hidden, out.last_hidden_state) <= 1e-5
        assert _rel_err(model.pool(hidden, ids), out.pooler_output) <= 1e-5
        for skip in range(1, min(cfg.num_layers, 3)):
            want = ref.final_layer_norm(out.hidden_states[-1 - skip])
            assert _rel_err(model(ids, skip=skip), want) <= 1e-5
