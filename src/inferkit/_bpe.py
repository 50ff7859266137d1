"""Small CLIP-style BPE tokenizers: the byte alphabet plus whole-word merges for chosen words."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["write_clip_tokenizer"]


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest to U+0100+.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, [chr(c) for c in codes], strict=True))


def _word_merges(word: str) -> list[str]:
    """Return the merges that build ``word`` left to right, ending in its end-of-word token."""
    symbols = [*word[:-1], word[-1] + "</w>"]
    merges = []
    current = symbols[0]
    for nxt in symbols[1:]:
        merges.append(f"{current} {nxt}")
        current += nxt
    return merges


def write_clip_tokenizer(
    folder: Path, *, words: Iterable[str] = (), pad_token: str = "<|endoftext|>"
) -> int:
    """Write vocab.json, merges.txt and tokenizer_config.json; return the vocabulary size.

    Every byte is a token (so any text tokenizes); each of ``words`` becomes one token.
    """
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in words:
        for merge in _word_merges(word.lower()):
            if merge not in merges:
                merges.append(merge)
    for merge in merges:
        token = merge.replace(" ", "")
        if token not in vocab_list:
            vocab_list.append(token)
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", "utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return len(vocab)
