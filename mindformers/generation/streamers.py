"""Streamers: receive token ids from ``generate()`` as they are produced and turn them into text.

The contract with ``generate`` (Hugging Face transformers' ``BaseStreamer``): ``put(prompt_ids)`` once with
the prompt, ``put(new_ids)`` once per new token, then ``end()``. Ids may be a numpy array, a list or a
MindSpore Tensor, of shape ``[n]`` or ``[1, n]``; a batch of more than one sequence is an error.

Text is released only when it can no longer change as more tokens arrive (transformers' rules):

- up to the last space (a word may still grow: "Bei" + "jing"),
- everything once the text ends with a newline (the token cache is then reset),
- everything once it ends with a CJK character (CJK words are not separated by spaces),
- never a trailing "\\ufffd": byte-level BPE splits an emoji or a CJK character across several tokens, and
  the bytes decoded so far form an incomplete UTF-8 sequence, shown as U+FFFD until the rest arrives.

The ids are decoded from the start of the current line each time, not token by token, because decoding
single tokens loses spaces (sentencepiece's leading "▁") and splits multi-byte characters. That part,
:class:`IncrementalDecoder`, is also the serving server's (which releases words before their space).
"""
import queue
from typing import Any, List, Optional

import numpy as np


class BaseStreamer:
    """What ``generate`` feeds: ``put`` for the prompt and each new token, ``end`` when generation stops."""

    def put(self, value: Any) -> None:
        """Receive token ids (the prompt on the first call, then one new token per call)."""
        raise NotImplementedError

    def end(self) -> None:
        """Generation has finished."""
        raise NotImplementedError


def _as_id_list(value: Any, streamer: str) -> List[int]:
    """Token ids of one sequence from a numpy array, list, int or MindSpore Tensor of shape [n] or [1, n]."""
    if hasattr(value, "asnumpy"):  # mindspore.Tensor
        value = value.asnumpy()
    array = np.asarray(value)
    if array.ndim == 2:
        if array.shape[0] > 1:
            raise ValueError(
                f"{streamer} only supports batch size 1; got ids of shape {array.shape}. Stream one prompt at a "
                "time, or call generate without a streamer for a batch"
            )
        array = array[0]
    elif array.ndim > 2:
        raise ValueError(f"{streamer} expects token ids of shape [n] or [1, n]; got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{streamer} expects integer token ids; got dtype {array.dtype}")
    return [int(i) for i in array.reshape(-1)]


def _is_cjk(char: str) -> bool:
    """Whether ``char`` is a CJK ideograph (the Unicode blocks transformers' BERT tokenizer treats as CJK).

    Hiragana, Katakana and Hangul are not included: they are written with spaces or punctuation between
    words often enough that waiting for a space is right, as in transformers.
    """
    cp = ord(char)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


class IncrementalDecoder:
    """The text of a growing list of token ids, released piece by piece as it becomes final.

    Each :meth:`add` decodes all the ids so far (not the new ones alone: single tokens lose spaces and split
    multi-byte characters) and returns the text that is final and was not returned before: see the module
    docstring for when text is final. With ``whole_words=False`` only the U+FFFD rule holds (text is
    released up to the end otherwise), for servers that send each character as soon as it is known.

    Subclasses may cut the text (:meth:`decode`) or hold more back (:meth:`final_length`).

    Args:
        tokenizer: anything with ``decode(ids, **decode_kwargs) -> str``.
        whole_words: hold back the last word until its space (a word may still grow: "Bei" + "jing").
        decode_kwargs: passed to ``tokenizer.decode``.

    Attributes:
        ids: the ids added since the last :meth:`reset`.
        text: the text of ``ids`` at the last :meth:`add` or :meth:`flush`.
        released: characters of ``text`` already returned.
    """

    def __init__(self, tokenizer: Any, whole_words: bool = True, **decode_kwargs: Any):
        self.tokenizer = tokenizer
        self.whole_words = whole_words
        self.decode_kwargs = decode_kwargs
        self.reset()

    def reset(self) -> None:
        """Start over with no ids."""
        self.ids: List[int] = []
        self.text = ""
        self.released = 0

    def add(self, ids: List[int]) -> str:
        """Take the next ids; return the newly final text (may be empty)."""
        self.ids.extend(ids)
        self.text = self.decode()
        return self._release(self.final_length(self.text))

    def flush(self) -> str:
        """No more ids will come: return everything not returned yet (a lone U+FFFD included, its bytes never
        completed)."""
        if self.ids:
            self.text = self.decode()
        return self._release(len(self.text))

    def decode(self) -> str:
        """The text of all the ids so far."""
        return self.tokenizer.decode(self.ids, **self.decode_kwargs)

    def final_length(self, text: str) -> int:
        """How many leading characters of ``text`` no further id can change."""
        if text.endswith("\n") or (text and _is_cjk(text[-1])):
            return len(text)
        if self.whole_words:
            # up to the last space: the last word may still grow, and a trailing "\ufffd" (U+FFFD, not CJK)
            # stands for UTF-8 bytes whose continuation has not arrived yet
            return text.rfind(" ") + 1
        return len(text.rstrip("\ufffd"))

    def _release(self, end: int) -> str:
        piece = self.text[self.released:end]
        self.released = max(self.released, end)
        return piece


class TextStreamer(BaseStreamer):
    """Print generated text to stdout as soon as it is final (see the module docstring for when).

    Example::

        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        model.generate(ids, streamer=streamer, max_new_tokens=20)

    Args:
        tokenizer: anything with ``decode(ids, **decode_kwargs) -> str`` (a :class:`PreTrainedTokenizer`).
        skip_prompt: leave out the prompt (the first ``put`` of each generation).
        decode_kwargs: passed to ``tokenizer.decode`` (e.g. ``skip_special_tokens=True``).
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any):
        if not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(
                f"{type(self).__name__} needs a tokenizer with a decode(ids) method; got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.decoder = IncrementalDecoder(tokenizer, **decode_kwargs)  # the ids since the last newline
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        """Add token ids and release the part of the text that is now final.

        Args:
            value: ids of shape [n] or [1, n] (numpy array, list or MindSpore Tensor).
        """
        ids = _as_id_list(value, type(self).__name__)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        printable = self.decoder.add(ids)
        if self.decoder.text.endswith("\n"):  # a line is complete: the next one is decoded on its own
            self.decoder.reset()
        self.on_finalized_text(printable)

    def end(self) -> None:
        """Release whatever text is left and get ready for the next generation."""
        printable = self.decoder.flush()
        self.decoder.reset()
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Output final text: here, print it (a newline after the last piece). Override to send it elsewhere.

        Args:
            text: the newly final text (may be empty).
            stream_end: this is the last call of the generation.
        """
        print(text, flush=True, end="\n" if stream_end else "")


class TextIteratorStreamer(TextStreamer):
    """Make generated text an iterator, for ``generate`` running in another thread (a UI, a server).

    Example::

        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
        thread = threading.Thread(target=model.generate, args=(ids,), kwargs=dict(streamer=streamer))
        thread.start()
        for piece in streamer:
            print(piece, end="")
        thread.join()

    Iteration yields the non-empty pieces of final text and stops when ``generate`` calls ``end()``.

    Args:
        tokenizer: anything with ``decode(ids, **decode_kwargs) -> str``.
        skip_prompt: leave out the prompt.
        timeout: seconds to wait for each piece; ``queue.Empty`` is raised when none arrives in time (e.g.
            generate failed in its thread). ``None`` waits forever.
        decode_kwargs: passed to ``tokenizer.decode``.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: Optional[float] = None,
                 **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: "queue.Queue[Any]" = queue.Queue()
        self.stop_signal = None  # put after the last piece of a generation
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Queue ``text`` for the iterator (empty pieces are dropped), and the stop signal at the end."""
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)  # raises queue.Empty after `timeout` seconds
        if value is self.stop_signal:
            raise StopIteration
        return value
