"""CLIP byte-level BPE tokenizer (Radford et al. 2021), as used by Stable Diffusion 1.x and 2.x.

The pipeline is CLIP's: clean the text, lower-case it, split it into pieces with CLIP's
pre-tokenisation pattern, map every UTF-8 byte of a piece to a printable character, merge the
characters with byte-pair encoding (the last character of a piece carries the ``</w>`` suffix) and
look the symbols up in the vocabulary. A prompt becomes ``[BOS, tokens[:75], EOS, PAD...]``, 77 ids.

Two references exist and differ in small ways; ``unescape_html`` picks between them:

- OpenAI CLIP and open_clip (what SD 1.x and 2.x were trained with) run ``ftfy.fix_text``, then
  ``html.unescape`` twice. We do the ``html.unescape`` part (``unescape_html=True``, the default)
  and NFC normalisation, but not the rest of ftfy: curly quotes (``’`` is not uncurled to ``'``),
  ligatures (``ﬁ``), full-width forms (``ｆｕｌｌ``) and mojibake are left as typed.
- transformers' (>= 5) ``CLIPTokenizer`` is a ``tokenizers`` pipeline: NFC, whitespace, lower-case,
  no HTML unescaping. ``unescape_html=False`` matches it id for id, except that Python's
  ``str.lower`` writes a word-final Greek capital sigma as ``ς`` where ``tokenizers`` writes ``σ``
  and Python counts the controls U+001C..U+001F as spaces (both as CLIP does), and characters
  newer than Python's Unicode tables.

Added tokens (textual inversion, ``add_token``) are matched in the cleaned prompt before BPE, as
transformers matches the added tokens of diffusers' ``load_textual_inversion``, so a prompt
without emphasis encodes to the same ids; unlike there, a token matches as a whole word only
(``art`` is not found in ``artist``, as in A1111, which matches whole BPE tokens), and a
multi-vector token stands for all its ids (diffusers rewrites the prompt to the same effect).

SD 2 quirk: its tokenizer pads with ``!``. transformers registers that pad token as a special
token and therefore splits every ``!`` of a prompt off as id 0 (``"cat!"`` -> ``cat</w>``, ``!``);
we keep CLIP's BPE (``!</w>``, id 256), which is what open_clip produced when SD 2 was trained.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
import itertools
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CONTEXT_LENGTH = 77  # BOS + 75 tokens + EOS, CLIP's text context
DEFAULT_BPE = "bpe_simple_vocab_16e6.txt.gz"
# CLIP keeps the first 49152 - 256 - 2 merges of the shipped file (which holds 262145 of them), so
# that 256 bytes + 256 bytes with </w> + merges + 2 special tokens make a 49408-entry vocabulary.
NUM_CLIP_MERGES = 49152 - 256 - 2

# CLIP's pre-tokenisation, written for Python's `re` (no \p{..} classes). In CLIP it reads
#   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
# `[^\W\d_]` is \w minus decimal digits and underscore: every letter (\p{L}) but also the
# non-decimal numbers (categories No and Nl, e.g. "²", "½", "Ⅻ"). `_split_numbers` splits those
# off again, one character each, as `[\p{N}]` does. `\d` is exactly the decimal digits (Nd), and
# `[^\s\w]|_` is "neither space, letter nor number" since `_` is the only \w character outside
# \p{L} and \p{N}. The text is lower-cased before, so the pattern needs no IGNORECASE.
_PIECE_RE = re.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|([^\W\d_]+)|\d|(?:[^\s\w]|_)+"
)


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Byte-to-character table of byte-level BPE (GPT-2, CLIP).

    Printable Latin-1 bytes stand for themselves; the 68 others (controls, space, soft hyphen...)
    are moved, in byte order, to U+0100 onwards so every byte is a visible character.

    Returns:
        A dict from each of the 256 byte values to a one-character string, ordered as CLIP's
        vocabulary: the printable bytes, then the moved ones.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {b: chr(b) for b in printable}
    moved = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + n) for n, b in enumerate(moved)})
    return table  # insertion order (printable bytes first) is the vocabulary order


def clean_text(text: str, *, unescape_html: bool = True) -> str:
    """CLIP's text cleanup without ftfy: NFC, HTML unescape (twice), whitespace, lower-case.

    Args:
        text: Raw prompt.
        unescape_html: Decode HTML entities (``&amp;`` -> ``&``) as CLIP does; ``False`` keeps
            them, as transformers' tokenizer does.

    Returns:
        The cleaned, lower-cased text with single spaces and no leading/trailing space.
    """
    text = unicodedata.normalize("NFC", text)
    if unescape_html:
        text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def _split_numbers(run: str) -> Iterable[str]:
    """Split a `[^\\W\\d_]+` match into letter runs and single non-decimal number characters."""
    if run.isalpha():
        yield run
        return
    for is_letter, chars in itertools.groupby(run, key=str.isalpha):
        if is_letter:
            yield "".join(chars)
        else:
            yield from chars


def split_pieces(text: str) -> list[str]:
    """CLIP pre-tokenisation of cleaned text into pieces, each later encoded on its own."""
    pieces = []
    for match in _PIECE_RE.finditer(text):
        if match.group(1) is None:
            pieces.append(match.group())
        else:
            pieces.extend(_split_numbers(match.group(1)))
    return pieces


def _read_pad_token(folder: Path) -> str:
    """The pad token named by a transformers tokenizer folder, `<|endoftext|>` if none is."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        pad = json.loads(path.read_text(encoding="utf-8")).get("pad_token")
        if isinstance(pad, dict):  # {"content": "!", "lstrip": false, ...}
            pad = pad.get("content")
        if pad is not None:
            return pad
    return EOS_TOKEN


def _read_added_tokens(folder: Path) -> dict[str, int]:
    """Token -> id of a folder's added tokens (textual inversion): transformers' legacy
    ``added_tokens.json``, else the non-special ``added_tokens`` of ``tokenizer.json``."""
    if (folder / "added_tokens.json").is_file():
        return json.loads((folder / "added_tokens.json").read_text(encoding="utf-8"))
    if not (folder / "tokenizer.json").is_file():
        return {}
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    return {t["content"]: t["id"] for t in data.get("added_tokens", []) if not t.get("special")}


def _parse_merges(lines: Iterable[str | Sequence[str]]) -> list[tuple[str, str]]:
    """Merge rules from `merges.txt` lines or `tokenizer.json` entries ("a b" or ["a", "b"])."""
    merges = []
    for line in lines:
        if isinstance(line, str):
            if not line.strip() or line.startswith("#version"):
                continue
            line = line.split()
        first, second = line
        merges.append((first, second))
    return merges


class CLIPTokenizer:
    """CLIP byte-level BPE tokenizer, 77-token prompts for the SD 1.x / 2.x text encoders.

    Args:
        vocab: Symbol to id; must contain ``<|startoftext|>``, ``<|endoftext|>`` and the pad token.
        merges: BPE merge rules, highest priority first.
        pad_token: Token filling prompts up to 77 ids: ``"<|endoftext|>"`` for SD 1.x (id 49407),
            ``"!"`` for SD 2.x (id 0, open_clip's zero padding).
        unescape_html: Decode HTML entities as CLIP does (see the module docstring).

    Example:
        >>> tok = CLIPTokenizer.default()
        >>> tok(["a photo of a cat"]).shape
        torch.Size([1, 77])
    """

    model_max_length = CONTEXT_LENGTH

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        pad_token: str = EOS_TOKEN,
        unescape_html: bool = True,
    ) -> None:
        missing = [t for t in (BOS_TOKEN, EOS_TOKEN, pad_token) if t not in vocab]
        if missing:
            raise ValueError(f"tokens {missing} are not in the vocabulary")
        self.vocab = dict(vocab)
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.ranks = {tuple(pair): rank for rank, pair in enumerate(merges)}
        self.pad_token = pad_token
        self.unescape_html = unescape_html
        self.bos_token_id = self.vocab[BOS_TOKEN]
        self.eos_token_id = self.vocab[EOS_TOKEN]
        self.pad_token_id = self.vocab[pad_token]
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        # Pieces typed as special tokens map to themselves, as in CLIP.
        self._cache: dict[str, tuple[str, ...]] = {BOS_TOKEN: (BOS_TOKEN,), EOS_TOKEN: (EOS_TOKEN,)}
        self.added_tokens: dict[str, tuple[str, ...]] = {}  # cleaned token -> its vocab symbols
        self._added_re: re.Pattern | None = None

    @classmethod
    def from_files(
        cls,
        vocab_json: str | Path,
        merges_txt: str | Path,
        *,
        pad_token: str = EOS_TOKEN,
        unescape_html: bool = True,
    ) -> CLIPTokenizer:
        """Load the diffusers/transformers layout: ``vocab.json`` and ``merges.txt``."""
        vocab = json.loads(Path(vocab_json).read_text(encoding="utf-8"))
        merges = _parse_merges(Path(merges_txt).read_text(encoding="utf-8").splitlines())
        return cls(vocab, merges, pad_token=pad_token, unescape_html=unescape_html)

    @classmethod
    def from_bpe_gz(
        cls, path: str | Path, *, pad_token: str = EOS_TOKEN, unescape_html: bool = True
    ) -> CLIPTokenizer:
        """Load CLIP's ``bpe_simple_vocab_16e6.txt.gz``, building the vocabulary as CLIP does.

        The order is: the 256 byte characters, the same with ``</w>``, one symbol per merge, then
        ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).
        """
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = _parse_merges(lines[1 : NUM_CLIP_MERGES + 1])  # line 0 is a version header
        chars = list(bytes_to_unicode().values())
        symbols = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in merges)]
        symbols += [BOS_TOKEN, EOS_TOKEN]
        vocab = {s: i for i, s in enumerate(symbols)}
        return cls(vocab, merges, pad_token=pad_token, unescape_html=unescape_html)

    @classmethod
    def from_folder(cls, path: str | Path, *, unescape_html: bool = True) -> CLIPTokenizer:
        """Load a transformers tokenizer folder (e.g. a diffusers repo's ``tokenizer/``).

        Reads ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``, which transformers >= 5
        writes instead) and the pad token from ``special_tokens_map.json`` or
        ``tokenizer_config.json``: ``<|endoftext|>`` in SD 1.x repos, ``!`` in SD 2.x repos.
        """
        folder = Path(path)
        options = {"pad_token": _read_pad_token(folder), "unescape_html": unescape_html}
        if (folder / "vocab.json").is_file():
            tokenizer = cls.from_files(folder / "vocab.json", folder / "merges.txt", **options)
        elif (folder / "tokenizer.json").is_file():
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            tokenizer = cls(model["vocab"], _parse_merges(model["merges"]), **options)
        else:
            raise FileNotFoundError(f"no vocab.json or tokenizer.json in {folder}")
        tokenizer._add_saved_tokens(_read_added_tokens(folder))
        return tokenizer

    @classmethod
    def default(cls, pad_token: str = EOS_TOKEN, *, unescape_html: bool = True) -> CLIPTokenizer:
        """The tokenizer of CLIP's vocabulary file shipped with pilot (SD 1.x and 2.x share it)."""
        asset = importlib.resources.files(__package__) / "assets" / DEFAULT_BPE
        with importlib.resources.as_file(asset) as path:
            return cls.from_bpe_gz(path, pad_token=pad_token, unescape_html=unescape_html)

    def bpe(self, piece: str) -> tuple[str, ...]:
        """Byte-pair-encode one byte-mapped piece; the last symbol carries ``</w>``. Cached."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        word = [*piece[:-1], piece[-1] + "</w>"]
        unmergeable = len(self.ranks)
        while len(word) > 1:
            ranks = [self.ranks.get(pair, unmergeable) for pair in itertools.pairwise(word)]
            best = min(range(len(ranks)), key=ranks.__getitem__)  # first of the lowest rank
            if ranks[best] == unmergeable:
                break
            word = _merge_pair(word, word[best], word[best + 1])
        if len(self._cache) < 100_000:  # plenty for prompts; bounds memory on odd inputs
            self._cache[piece] = tuple(word)
        return tuple(word)

    def add_token(self, token: str, count: int = 1, first_id: int | None = None) -> list[int]:
        """Add a prompt word standing for ``count`` new ids (a textual inversion embedding).

        The word is cleaned as prompts are (lower-cased), so it matches in any case. Its ids
        are named ``token``, ``token_1``, ... in ``vocab``, as diffusers names them.

        Args:
            token: The word, e.g. ``"easynegative"``.
            count: How many ids (vectors) it stands for.
            first_id: Its first id; default one past the largest id (a text encoder with a
                larger embedding table needs its size here).

        Returns:
            The new ids, in order.

        Raises:
            ValueError: an empty token, or one (or one of its ``_k`` names) already in the
                vocabulary, as a symbol, a whole word or an added token.
        """
        word = clean_text(token, unescape_html=self.unescape_html)
        names = [word] + [f"{word}_{k}" for k in range(1, count)]
        if not word or count < 1:
            raise ValueError(f"token {token!r}: needs a non-empty word and count >= 1")
        taken = [n for n in (*names, word + "</w>") if n in self.vocab] + (
            [word] if word in self.added_tokens else []
        )
        if taken:
            raise ValueError(f"token {token!r} is already in the vocabulary (as {taken[0]!r})")
        start = max(self.vocab.values()) + 1 if first_id is None else first_id
        if start <= max(self.vocab.values()):
            raise ValueError(f"first_id={first_id} is taken: ids up to {max(self.vocab.values())}")
        ids = list(range(start, start + count))
        self.vocab.update(zip(names, ids, strict=True))
        self.id_to_token.update(zip(ids, names, strict=True))
        self.added_tokens[word] = tuple(names)
        alternatives = sorted(self.added_tokens, key=len, reverse=True)  # longest match first
        self._added_re = re.compile("|".join(_whole_word(w) for w in alternatives))
        return ids

    def _add_saved_tokens(self, added: dict[str, int]) -> None:
        """Add a folder's added tokens again; ``name_k`` with the next id joins ``name``, as
        diffusers names the vectors of one embedding."""
        groups: list[list] = []  # [name, count, first id]
        for name, i in sorted(added.items(), key=lambda item: item[1]):
            last = groups[-1] if groups else None
            if last and name == f"{last[0]}_{last[1]}" and i == last[2] + last[1]:
                last[1] += 1
            elif name not in self.vocab:  # special tokens are in the vocabulary already
                groups.append([name, 1, i])
        for name, count, first in groups:
            self.add_token(name, count, first_id=first)

    def tokenize(self, text: str) -> list[str]:
        """Clean and split ``text`` into BPE symbols (no BOS/EOS); added tokens first."""
        text = clean_text(text, unescape_html=self.unescape_html)
        if self._added_re is None:
            return self._tokenize_clean(text)
        symbols, start = [], 0
        for match in self._added_re.finditer(text):
            symbols += self._tokenize_clean(text[start : match.start()])
            symbols += self.added_tokens[match.group()]
            start = match.end()
        return symbols + self._tokenize_clean(text[start:])

    def _tokenize_clean(self, text: str) -> list[str]:
        symbols = []
        for piece in split_pieces(text):
            if piece not in (BOS_TOKEN, EOS_TOKEN):  # typed special tokens are kept whole
                piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            symbols.extend(self.bpe(piece))
        return symbols

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS and without truncation (for prompt chunking).

        Symbols missing from the vocabulary (impossible with CLIP's, which holds every byte) map
        to EOS, transformers' unknown token.
        """
        return [self.vocab.get(s, self.eos_token_id) for s in self.tokenize(text)]

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Tokenize prompts to ``[BOS, ids[:75], EOS, PAD...]``.

        Args:
            prompts: One prompt or a list of them.

        Returns:
            LongTensor ``(B, 77)``, as transformers' ``tokenizer(prompts, padding="max_length",
            max_length=77, truncation=True).input_ids``.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = []
        for prompt in prompts:
            ids = self.encode(prompt)[: CONTEXT_LENGTH - 2]
            row = [self.bos_token_id, *ids, self.eos_token_id]
            rows.append(row + [self.pad_token_id] * (CONTEXT_LENGTH - len(row)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), CONTEXT_LENGTH)

    def decode(self, ids: Sequence[int] | torch.Tensor, *, skip_special_tokens: bool = True) -> str:
        """Text of token ids; ``</w>`` becomes a space.

        Args:
            ids: One sequence of ids (a list or a 1-D tensor).
            skip_special_tokens: Drop BOS and stop at the first EOS, so padding (even SD 2's
                ``!``) is not decoded. transformers instead drops every pad id, real ``!`` too.

        Returns:
            The decoded text, stripped; invalid UTF-8 is replaced by U+FFFD.
        """
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if skip_special_tokens:
            ids = [i for i in ids if i != self.bos_token_id]
            if self.eos_token_id in ids:
                ids = ids[: ids.index(self.eos_token_id)]
        data = bytearray()
        added = {name for names in self.added_tokens.values() for name in names}
        for i in ids:
            token = self.id_to_token[i]
            if token in added:  # typed as it is, not byte-mapped
                data += token.encode("utf-8") + b" "
                continue
            word = token.removesuffix("</w>")  # special tokens are printable ASCII: kept as typed
            data += bytes(self.byte_decoder[c] for c in word)
            if len(word) < len(token):
                data += b" "
        return data.decode("utf-8", errors="replace").strip()


def _whole_word(word: str) -> str:
    """A pattern matching `word` not inside a longer run of letters and digits."""
    before = r"(?<![^\W_])" if word[0].isalnum() else ""
    after = r"(?![^\W_])" if word[-1].isalnum() else ""
    return before + re.escape(word) + after


def _merge_pair(word: list[str], first: str, second: str) -> list[str]:
    """Merge every non-overlapping ``(first, second)`` of ``word``, left to right."""
    merged = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged
