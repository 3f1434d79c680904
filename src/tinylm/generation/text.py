"""Generated ids as text: UTF-8-safe pieces as tokens arrive, and stop strings.

    token ids ─► TextStream (decode after the prompt; a piece ending in a split UTF-8 character waits)
              ─► StopFilter (text that may begin a stop string waits; nothing after the first stop string)
              ─► pieces whose join is `cut_at_stop(added_text(...))`

`RowText` is that pipeline for one row of the generation engine (its `stopped` ends the row); beam search
asks `added_text` + `find_stop` of each hypothesis. Every caller (`Run.generate/stream/chat`, beam search,
the server) gets a row's text this one way: the text its new ids add after the prompt, cut before the first
stop string; the row stops once that text holds one.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Sequence

Decode = Callable[[Sequence[int]], str]

class TextStream:
    """Token ids in, text pieces out, one id at a time (what `stream_text` does for an iterable):
    `push(id)` returns the text that id completes (maybe ""), `flush()` the held-back rest. A
    piece ending in `hold` (U+FFFD) may be a UTF-8 character split across tokens, so it is held
    back until the next token completes it. The ids are decoded after `prefix` (the prompt),
    which is not returned: the first piece is spaced or joined as it is in the whole text."""

    def __init__(self, decode: Callable[[Sequence[int]], str], prefix: Sequence[int] = (), hold: str = "\ufffd"):
        self.decode, self.hold = decode, hold
        self.tokens = list(prefix)
        self.text = decode(self.tokens) if self.tokens else ""
        self.emitted = len(self.text)

    def push(self, token: int) -> str:
        self.tokens.append(token)
        self.text = self.decode(self.tokens)
        if self.text.endswith(self.hold) or len(self.text) <= self.emitted:
            return ""
        out, self.emitted = self.text[self.emitted:], len(self.text)
        return out

    def flush(self) -> str:
        out, self.emitted = self.text[self.emitted:], max(len(self.text), self.emitted)
        return out


def stream_text(ids: Iterable[int], decode: Callable[[Sequence[int]], str], hold: str = "\ufffd",
                prefix: Sequence[int] = ()) -> Iterator[str]:
    """Turn a stream of token ids into text pieces (see `TextStream`: split UTF-8 characters are
    held back; the first piece is spaced or joined after `prefix` as in the whole text)."""
    stream = TextStream(decode, prefix, hold)
    for token in ids:
        piece = stream.push(token)
        if piece:
            yield piece
    rest = stream.flush()
    if rest:
        yield rest


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest occurrence of any stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the first stop string."""
    i = find_stop(text, stops)
    return text if i < 0 else text[:i]


class StopFilter:
    """Streams text pieces, cut before the first stop string: text that might be the beginning
    of a stop string is held back until the next piece shows whether it is one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def _held(self) -> int:
        """Length of the longest end of the text that is a proper beginning of a stop string."""
        longest = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text) - self.emitted), longest, -1):
                if self.text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def feed(self, piece: str) -> str:
        """The text that is now safe to show (empty once a stop string was seen)."""
        if self.stopped:
            return ""
        start = max(self.emitted - max((len(s) for s in self.stops), default=0), 0)
        self.text += piece
        end = len(self.text) - self._held()  # a stop string may still begin at `end`
        i = find_stop(self.text[start:], self.stops)
        if i >= 0 and start + i <= end:  # no longer stop string can begin before this one
            self.stopped = True
            out, self.emitted = self.text[self.emitted:start + i], len(self.text)
            return out
        out, self.emitted = self.text[self.emitted:end], max(end, self.emitted)
        return out

    def flush(self) -> str:
        """The held-back rest at the end of the stream (up to a stop string it holds)."""
        if self.stopped:
            return ""
        out, self.emitted = cut_at_stop(self.text[self.emitted:], self.stops), len(self.text)
        return out

    def __call__(self, pieces: Iterable[str]) -> Iterator[str]:
        for piece in pieces:
            out = self.feed(piece)
            if out:
                yield out
            if self.stopped:
                return
        out = self.flush()
        if out:
            yield out


def added_text(decode: Decode, prompt: Sequence[int], ids: Sequence[int], markers: Iterable[int] = ()) -> str:
    """The text `ids` add after `prompt` (what `TextStream` streams): decode(prompt + ids) after the
    prompt's own text, decoded together so tokenizers that space or merge across tokens join it as in
    the whole text; `markers` (document markers, e.g. end-of-text) are left out."""
    left = set(markers)
    head = decode(list(prompt)) if prompt else ""
    return decode([*prompt, *(t for t in ids if t not in left)])[len(head):]


class RowText:
    """One generated row's text: `push(id)` gives the text that id completes (markers left out, split
    UTF-8 held back, text that may begin a stop string held back), `flush()` the rest at the end;
    `stopped` once the text holds a stop string (nothing after it is given)."""

    def __init__(self, decode: Decode, prompt: Sequence[int], stops: Sequence[str] = (), markers: Iterable[int] = ()):
        self.stream = TextStream(decode, prefix=prompt)
        self.stops = StopFilter(stops) if stops else None
        self.markers = set(markers)

    @property
    def stopped(self) -> bool:
        return self.stops is not None and self.stops.stopped

    def push(self, token: int) -> str:
        piece = self.stream.push(token) if token not in self.markers else ""
        return self.stops.feed(piece) if self.stops is not None else piece

    def flush(self) -> str:
        if self.stopped:
            return ""
        rest = self.stream.flush()
        return (self.stops.feed(rest) + self.stops.flush()) if self.stops is not None else rest
