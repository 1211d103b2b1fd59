"""An answer as a stream of text pieces (``stream: true`` of the server, the web page, :meth:`Aurora.stream`).

:meth:`StreamEngine.decode` runs the decoding loop behind a callback and returns the whole answer; a server has to
send each piece as soon as it exists, so this is the same loop as a generator: the same token choice
(:func:`next_token`, the same seeded generator), the same end conditions (EOS, a stop string, the length), the same
order of "choose, record, feed back only when a step follows" as :meth:`AuroraModel.decode_steps`. The pieces
joined are the engine's answer before its final ``strip()`` (a test holds the two together token for token).

Text that could still turn into a stop string, or that ends in an incomplete UTF-8 character (a token can end in
the middle of one), is held back until the next token decides it.
"""
from __future__ import annotations

from typing import Iterator

import torch

from aurora.infer.engine import Generation, StreamEngine, VideoState, next_token


def _safe_length(text: str, stops: list[str]) -> int:
    """How much of ``text`` can be sent: not a trailing replacement character, not a tail that begins a stop."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for s in stops:
        held = max([held] + [k for k in range(1, min(len(s), end + 1)) if text[:end].endswith(s[:k])])
    return end - held


@torch.no_grad()
def stream_answer(engine: StreamEngine, vs: VideoState, question: str, gen: Generation,
                  finish: dict | None = None) -> Iterator[str]:
    """Yield the answer to ``question`` from state ``vs`` piece by piece; ``finish["reason"]`` and
    ``finish["tokens"]`` are set at the end ("stop", "eos" or "length", as :class:`Answer.finish`)."""
    finish = finish if finish is not None else {}
    rnn, tok = engine.rnn, engine.tokenizer
    after = tok.encode(engine.template.after.format(question=question))
    last, state = engine.read_ids(after, vs.state)
    logits = rnn.logits(last) if last is not None else vs.logits
    generator = torch.Generator(device=logits.device).manual_seed(gen.seed) if gen.temperature > 0 else None
    stops = [s for s in gen.stop if s]
    tokens: list[int] = []
    sent, reason, text, started = 0, "length", "", False
    for step in range(gen.max_new_tokens):
        t = next_token(logits[0], gen.temperature, gen.top_p, generator)
        if gen.eos_id is not None and t == gen.eos_id:
            reason = "eos"
            break
        tokens.append(t)
        text = tok.decode(tokens)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            text, reason = text[:cut], "stop"
            break
        ready = _safe_length(text, stops)
        if ready > sent:
            piece, sent = text[sent:ready], ready
            piece = piece if started else piece.lstrip()  # the answer is stripped: no leading space
            if piece:
                started = True
                yield piece
        if step == gen.max_new_tokens - 1:
            break
        hidden, state = rnn(rnn.embed(torch.tensor([[t]], device=logits.device)), state)
        logits = rnn.logits(hidden[:, -1])
    rest = text[sent:] if started else text[sent:].lstrip()
    if rest:
        yield rest
    finish.update(reason=reason, tokens=tokens)
