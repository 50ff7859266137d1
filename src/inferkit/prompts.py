"""Prompts longer than the text encoder's window: split into chunks, encode, concatenate.

CLIP text encoders see 77 tokens: a start token, 75 tokens of text and an end token. diffusers
cuts longer prompts off there. inferkit, like AUTOMATIC1111 and ComfyUI, splits the tokens into
chunks of 75, encodes each chunk as its own 77-token sequence, and concatenates the results
along the sequence. The UNet's cross-attention takes context of any length. The negative prompt
gets as many chunks as the prompt (padded with empty chunks), so the two batch together. SDXL's
pooled embedding comes from the first chunk. Prompts that fit in one window take diffusers' own
path, unchanged.

Weighting syntax such as ``(word:1.3)`` is not interpreted: the brackets are plain text.

Example:
    >>> import inferkit
    >>> model = inferkit.Model.load(inferkit.testing.tiny_model_path("sd1"))
    >>> tok = model.pipeline.tokenizer
    >>> token_count(tok, "a red"), len(chunks(tok, "a " * 100))
    (2, 2)

"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["chunks", "encode_long", "needs_chunks", "token_count"]


def token_count(tokenizer: Any, text: str) -> int:
    """Return how many tokens ``text`` has, without the start and end tokens."""
    return len(_token_ids(tokenizer, text))


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # verbose=False: the tokenizer would warn that the ids exceed the window, which is the point.
    ids: list[int] = tokenizer(
        text, add_special_tokens=False, truncation=False, verbose=False
    ).input_ids
    return ids


def _window(tokenizer: Any) -> int:
    return int(tokenizer.model_max_length) - 2


def chunks(tokenizer: Any, text: str) -> list[list[int]]:
    """Split ``text``'s token ids into windows of 75 (at least one, possibly empty)."""
    ids = _token_ids(tokenizer, text)
    size = _window(tokenizer)
    return [ids[i : i + size] for i in range(0, len(ids), size)] or [[]]


def needs_chunks(tokenizer: Any, *texts: str) -> bool:
    """Whether any of ``texts`` is longer than one window."""
    return any(token_count(tokenizer, t) > _window(tokenizer) for t in texts)


def _ids(tokenizer: Any, chunk: list[int], device: torch.device) -> torch.Tensor:
    length = int(tokenizer.model_max_length)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
    ids += [pad] * (length - len(ids))
    return torch.tensor([ids], device=device)


def _padded(parts: list[list[int]], count: int) -> list[list[int]]:
    return parts + [[] for _ in range(count - len(parts))]


def _encode_sd(pipe: Any, parts: list[list[int]], device: torch.device) -> torch.Tensor:
    encoder = pipe.text_encoder
    out = [encoder(_ids(pipe.tokenizer, c, device))[0] for c in parts]
    return torch.cat(out, dim=1).to(dtype=encoder.dtype, device=device)


def _encode_xl(
    pipe: Any, parts: list[list[int]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = []
    pooled = None
    for chunk in parts:
        hidden = []
        for tokenizer, encoder in (
            (pipe.tokenizer, pipe.text_encoder),
            (pipe.tokenizer_2, pipe.text_encoder_2),
        ):
            out = encoder(_ids(tokenizer, chunk, device), output_hidden_states=True)
            if encoder is pipe.text_encoder_2 and pooled is None:
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
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
    positive = chunks(tokenizer, prompt)
    negative = chunks(tokenizer, negative_prompt)
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
