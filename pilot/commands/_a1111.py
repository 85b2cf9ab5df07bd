"""The LoRAs and textual inversion embeddings in the A1111 `parameters` text of `pilot generate`'s
PNGs, written as A1111 writes them so that image sites (civitai) link the resources:

- each LoRA as `<lora:NAME:SCALE>` at the end of the prompt (where A1111 users write them; NAME
  is the file's stem, as A1111 names LoRAs) and in `Lora hashes: "NAME: HASH, ..."`;
- each embedding that the prompt or negative prompt uses (A1111 lists only those) in
  `TI hashes: "TOKEN: HASH, ..."`.

HASH is the 12-digit short hash A1111 shows (`pilot.weights.hashes`). pilot's own JSON is not
changed: it records the `--lora` / `--embedding` entries themselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pilot.commands._lora import parse_lora


@dataclass(frozen=True)
class ExtraNetworks:
    """What A1111 calls extra networks, hashed.

    Attributes:
        loras: `(name, scale, short hash)` per `--lora`, in order.
        embeddings: `(token, short hash)` per embedding the prompts use, in `--embedding` order.
    """

    loras: tuple[tuple[str, float, str], ...] = ()
    embeddings: tuple[tuple[str, str], ...] = ()


def read_extra_networks(
    lora_entries: Sequence[str], embeddings: Iterable[tuple[str, Path]]
) -> ExtraNetworks:
    """Hash the `--lora FILE[:SCALE]` files and the `(token, file)` embeddings (those the
    prompts use: `used_embeddings`)."""
    from pilot.weights.hashes import SHORT_HASH, embedding_hash, lora_hash

    loras = tuple(
        (Path(path).stem, scale, lora_hash(path)[:SHORT_HASH])
        for path, scale in map(parse_lora, lora_entries)
    )
    used = tuple((token, embedding_hash(path)[:SHORT_HASH]) for token, path in embeddings)
    return ExtraNetworks(loras, used)


def used_embeddings(
    tokenizer: Any, texts: Sequence[str], loaded: Iterable[tuple[str, Path]]
) -> list[tuple[str, Path]]:
    """The `(token, file)` of the loaded embeddings whose token is in one of `texts` (as the
    tokenizer finds it: any case, a whole word)."""
    from pilot.models.tokenizer import clean_text

    symbols = {s for text in texts for s in tokenizer.tokenize(text)}
    return [(token, path) for token, path in loaded if clean_text(token) in symbols]


def prompt_with_loras(prompt: str, networks: ExtraNetworks) -> str:
    """`prompt <lora:NAME:SCALE> ...`, as A1111 would have been given it."""
    tags = [f"<lora:{name}:{scale:g}>" for name, scale, _ in networks.loras]
    return " ".join([prompt, *tags]) if tags else prompt


def hash_fields(networks: ExtraNetworks) -> list[str]:
    """The `Lora hashes` and `TI hashes` entries of the settings line (none when empty)."""
    fields = []
    for key, items in (
        ("Lora hashes", [(name, h) for name, _, h in networks.loras]),
        ("TI hashes", networks.embeddings),
    ):
        if items:  # A1111 drops ':' and ',' from the names, then quotes the value
            value = ", ".join(f"{_bare(name)}: {h}" for name, h in items)
            fields.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    return fields


def _bare(name: str) -> str:
    return name.replace(":", "").replace(",", "")
