"""Prompts longer than the text encoder's window: split into chunks, encode, concatenate.

CLIP text encoders see 77 tokens: a start token, 75 tokens of text and an end token. diffusers
cuts longer prompts off there. inferkit, like AUTOMATIC1111 and ComfyUI, splits the tokens into
chunks of 75, encodes each chunk as its own 77-token sequence, and concatenates the results
along the sequence. The UNet's cross-attention takes context of any length. The negative prompt
gets as many chunks as the prompt (padded with empty chunks), so the two batch together. SDXL's
pooled embedding comes from the first chunk. Prompts that fit in one window take diffusers' own
path, unchanged.

AUTOMATIC1111's weighting syntax (``(word:1.3)``, ``(word)``, ``[word]``, ``BREAK``; see
:mod:`inferkit.prompt_weights`) is read when ``weighting`` is on: each token's embedding is
multiplied by its weight, then the chunk is rescaled to its original mean, as AUTOMATIC1111
does. A prompt with weighting syntax takes this path even when it is short.

Example:
    >>> import inferkit
    >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
    >>> tok = model.pipeline.tokenizer
    >>> token_count(tok, "a red"), len(chunks(tok, "a " * 100))
    (2, 2)
    >>> chunks(tok, "a (red:1.5)", weighting=True)[0][1]
    [1.0, 1.5]

"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["COMMA_BACKTRACK", "Chunk", "chunks", "encode_long", "needs_own_encoding", "token_count"]

Chunk = tuple[list[int], list[float]]
"""One window's token ids and their weights."""


def token_count(tokenizer: Any, text: str, weighting: bool = False) -> int:
    """Return how many tokens ``text`` has, without the start and end tokens.

    With ``weighting``, the weighting syntax is not counted (only the text it weights).
    """
    if weighting:
        return sum(len(ids) for ids, _ in chunks(tokenizer, text, weighting=True))
    return len(_token_ids(tokenizer, text))


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: the tokenizer would warn that the ids exceed the window, which is the point.
    ids: list[int] = tokenizer(
        text, add_special_tokens=False, truncation=False, verbose=False
    ).input_ids
    return ids


def _window(tokenizer: Any) -> int:
    return int(tokenizer.model_max_length) - 2


COMMA_BACKTRACK = 20
"""A window that fills up ends after its last comma when that comma is this close to the end
(AUTOMATIC1111's default), so that a phrase is not cut in two."""


def chunks(tokenizer: Any, text: str, *, weighting: bool = False) -> list[Chunk]:
    """Split ``text``'s tokens into windows of 75 (at least one, possibly empty).

    A full window ends after its last comma if that is within :data:`COMMA_BACKTRACK` tokens
    of its end, as AUTOMATIC1111 does. With ``weighting``, the weighting syntax gives each
    token its weight, and ``BREAK`` starts a new window; otherwise every weight is 1.
    """
    segments: list[tuple[list[int], list[float]]] = [([], [])]
    if not weighting:
        ids = _token_ids(tokenizer, text)
        segments = [(ids, [1.0] * len(ids))]
    else:
        from inferkit.prompt_weights import BREAK, parse_weights

        for fragment, weight in parse_weights(text):
            if fragment == BREAK and weight == -1.0:
                segments.append(([], []))
                continue
            tokens = _token_ids(tokenizer, fragment)
            segments[-1][0].extend(tokens)
            segments[-1][1].extend([weight] * len(tokens))
    comma = _comma_id(tokenizer)
    size = _window(tokenizer)
    out: list[Chunk] = []
    for ids, weights in segments:
        out.extend(_windows(ids, weights, size, comma))
    return out


def _comma_id(tokenizer: Any) -> int | None:
    ids = _token_ids(tokenizer, ",")
    return ids[0] if len(ids) == 1 else None


def _windows(ids: list[int], weights: list[float], size: int, comma: int | None) -> list[Chunk]:
    """Cut one BREAK-free run of tokens into windows (one, empty, for no tokens)."""
    out: list[Chunk] = []
    while len(ids) > size:
        cut = size
        last = max((i for i in range(size) if ids[i] == comma), default=-1)
        if last >= 0 and size - last <= COMMA_BACKTRACK:
            cut = last + 1
        out.append((ids[:cut], weights[:cut]))
        ids, weights = ids[cut:], weights[cut:]
    out.append((ids, weights))
    return out


def needs_own_encoding(tokenizer: Any, *texts: str, weighting: bool = False) -> bool:
    """Whether any of ``texts`` is longer than one window, or (``weighting``) uses weights."""
    from inferkit.prompt_weights import has_weights

    return any(
        token_count(tokenizer, t) > _window(tokenizer) or (weighting and has_weights(t))
        for t in texts
    )


def _ids(tokenizer: Any, chunk: list[int], device: torch.device) -> torch.Tensor:
    length = int(tokenizer.model_max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    ids += [pad] * (length - len(ids))
    return torch.tensor([ids], device=device)


def _padded(parts: list[Chunk], count: int) -> list[Chunk]:
    return parts + [([], []) for _ in range(count - len(parts))]


def _weighted(z: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """Multiply each token's embedding by its weight, then restore the chunk's mean."""
    if all(w == 1.0 for w in weights):
        return z
    scale = torch.ones(z.shape[1], dtype=torch.float32, device=z.device)
    scale[1 : 1 + len(weights)] = torch.tensor(weights, dtype=torch.float32)
    original = z.float().mean()
    weighted = z.float() * scale[None, :, None]
    new = weighted.mean()
    size = z.float().abs().mean()
    if original.abs() <= 1e-3 * size or new.abs() <= 1e-3 * size:
        return weighted.to(z.dtype)  # a mean near zero cannot be restored by scaling
    return (weighted * (original / new)).to(z.dtype)


def _encode_sd(pipe: Any, parts: list[Chunk], device: torch.device) -> torch.Tensor:
    encoder = pipe.text_encoder
    out = [_weighted(encoder(_ids(pipe.tokenizer, ids, device))[0], w) for ids, w in parts]
    return torch.cat(out, dim=1).to(dtype=encoder.dtype, device=device)


def _encode_xl(
    pipe: Any, parts: list[Chunk], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    pooled = None
    for ids, weights in parts:
        hidden = []
        for tokenizer, encoder in (
            (pipe.tokenizer, pipe.text_encoder),
            (pipe.tokenizer_2, pipe.text_encoder_2),
        ):
            out = encoder(_ids(tokenizer, ids, device), output_hidden_states=True)
            if encoder is pipe.text_encoder_2 and pooled is None:
                pooled = out[0]
            hidden.append(_weighted(out.hidden_states[-2], weights))
        rows.append(torch.cat(hidden, dim=-1))
    assert pooled is not None
    dtype = pipe.text_encoder_2.dtype
    return torch.cat(rows, dim=1).to(dtype=dtype, device=device), pooled.to(dtype=dtype)


def encode_long(
    pipe: Any,
    architecture: str,
    prompt: str,
    negative_prompt: str,
    device: torch.device,
    guided: bool,
    weighting: bool = False,
) -> dict[str, torch.Tensor]:
    """Encode a prompt (and negative prompt) of any length; keys as the pipelines expect.

    Example:
        >>> import inferkit, torch
        >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
        >>> out = encode_long(model.pipeline, "sd1", "a " * 100, "", torch.device("cpu"), True)
        >>> tuple(out["prompt_embeds"].shape[:2]), tuple(out["negative_prompt_embeds"].shape[:2])
        ((1, 154), (1, 154))

    """
    tokenizer = pipe.tokenizer
    positive = chunks(tokenizer, prompt, weighting=weighting)
    negative = chunks(tokenizer, negative_prompt, weighting=weighting)
    count = max(len(positive), len(negative) if guided else 0)
    positive, negative = _padded(positive, count), _padded(negative, count)
    if architecture == "sdxl":
        embeds, pooled = _encode_xl(pipe, positive, device)
        out = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if guided:
            if not negative_prompt and pipe.config.force_zeros_for_empty_prompt:
                neg, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
            else:
                neg, neg_pooled = _encode_xl(pipe, negative, device)
            out |= {"negative_prompt_embeds": neg, "negative_pooled_prompt_embeds": neg_pooled}
        return out
    out = {"prompt_embeds": _encode_sd(pipe, positive, device)}
    if guided:
        out["negative_prompt_embeds"] = _encode_sd(pipe, negative, device)
    return out
