"""Text generation: continue prompts, or answer chats, with a causal language model's ``generate``."""
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..auto import AutoModelForCausalLM
from ..registry import TASKS
from .base import Pipeline, pad_rows

OUTPUT_KEY = "text_generation_text"  # MindFormers' output key
RESERVED = ("input_ids", "attention_mask")  # set by the pipeline from its inputs


class TextGenerationPipeline(Pipeline):
    """Generate text from prompts or chats.

    Inputs and outputs (one dict per input, MindFormers' shape; each holds a list with one text per
    returned sequence, so ``num_return_sequences=n`` gives n texts):

    - a prompt string -> ``[{"text_generation_text": [prompt + generated text]}]``;
    - a list of prompts -> one dict per prompt; the prompts go to ``generate`` as one batch;
    - a chat (a list of ``{"role", "content"}`` dicts) or a list of chats -> the chat template is applied
      with ``add_generation_prompt=True`` and the output holds the assistant's answer only, decoded as a
      message of its own. (Hugging Face returns the whole conversation with the answer appended under
      ``generated_text``; we keep MindFormers' key, and the answer alone is what a caller appends to the
      chat as ``{"role": "assistant", "content": answer}`` for the next turn.)

    Texts are decoded with ``skip_special_tokens=True``. Prompts are left-padded whatever the tokenizer's
    ``padding_side`` (GPT-2's is right): ``generate`` appends new tokens after the last column, so right
    padding would put pad tokens between a short prompt and its continuation.

    Per-call options are ``generate``'s keyword arguments (``max_length``, ``max_new_tokens``,
    ``do_sample``, ``top_k``, ``top_p``, ``temperature``, ``num_beams``, ``num_return_sequences``,
    ``stop_strings``, ``seed``, ``streamer``, ...); ``generate`` rejects unknown names with its own message.

    Args:
        model: a causal LM preset/path or a model with ``generate`` and ``config`` (default: SmolLM2-135M-Instruct).
        tokenizer: a name, path or tokenizer instance (default: the model's).
        defaults: default generation options, e.g. ``max_new_tokens=50``.
    """

    task = "text_generation"
    model_class = AutoModelForCausalLM
    model_task = "causal_lm"
    default_model = "smollm2_135m_instruct"
    options = None  # forwarded to generate(), which checks them

    def _check_model(self, model: Any) -> None:
        super()._check_model(model)
        if not callable(getattr(model, "generate", None)):
            raise TypeError(
                f"the {self.task} pipeline needs a model with a generate() method; {type(model).__name__} has none"
            )

    def _check_options(self, options: Dict[str, Any]) -> Dict[str, Any]:
        taken = sorted(set(options) & set(RESERVED))
        if taken:
            raise ValueError(
                f"{taken} are made by the {self.task} pipeline from its inputs; pass the prompt text instead, "
                "or call model.generate(input_ids, attention_mask=...) directly"
            )
        return dict(options)

    def __call__(self, inputs: Any, **kwargs: Any) -> List[Dict[str, List[str]]]:
        """Generate for one prompt, a list of prompts, one chat or a list of chats.

        Args:
            inputs: see the class docstring.
            kwargs: generation options for this call, overriding the pipeline's defaults.

        Returns:
            One ``{"text_generation_text": [text, ...]}`` per input.
        """
        options = self._options(kwargs)
        options.setdefault("tokenizer", self.tokenizer)  # generate needs it for stop_strings
        items, is_chat = self._inputs(inputs)
        rows = self._encode_chats(items) if is_chat else self._encode(items, prompts=True)
        input_ids, attention_mask = pad_rows(rows, self._pad_token_id(), "left")
        output = self.model.generate(input_ids, attention_mask=attention_mask, **options)
        output = np.asarray(output.asnumpy() if hasattr(output, "asnumpy") else output)
        if output.ndim != 2 or output.shape[0] % len(rows) or output.shape[1] < input_ids.shape[1]:
            raise RuntimeError(
                f"generate returned shape {output.shape}; expected [batch * num_return_sequences, prompt + new "
                f"tokens] with batch {len(rows)} and a prompt of {input_ids.shape[1]} tokens"
            )
        per_input = output.shape[0] // len(rows)
        new_tokens = output[:, input_ids.shape[1]:]  # rows of input i are i*n .. i*n + n - 1
        results = []
        for i, row in enumerate(rows):
            sequences = new_tokens[i * per_input:(i + 1) * per_input]
            if is_chat:  # the answer is a message of its own
                texts = [self.tokenizer.decode(s.tolist(), skip_special_tokens=True) for s in sequences]
            else:
                texts = [items[i] + self._continuation(row, s) for s in sequences]
            results.append({OUTPUT_KEY: texts})
        return results

    def _inputs(self, inputs: Any) -> Tuple[List[Any], bool]:
        """``(items, is_chat)``: a list of prompt strings or a list of chats."""
        if _is_chat(inputs):
            return [list(inputs)], True
        if isinstance(inputs, (list, tuple)) and inputs and all(_is_chat(item) for item in inputs):
            return [list(item) for item in inputs], True
        if isinstance(inputs, (list, tuple)) and inputs and any(_is_chat(item) for item in inputs):
            kinds = sorted({"chat" if _is_chat(item) else type(item).__name__ for item in inputs})
            raise TypeError(
                f"the {self.task} pipeline takes a list of prompts or a list of chats, not a mix; got {kinds}"
            )
        try:
            return self._texts(inputs)[0], False
        except TypeError as err:
            raise TypeError(
                f"{err}; or a chat (a list of {{'role': ..., 'content': ...}} dicts), or a list of chats"
            ) from None

    def _encode_chats(self, chats: Sequence[List[Dict[str, Any]]]) -> List[List[int]]:
        """Token ids of each chat rendered with the chat template, ending with the assistant's header."""
        encoded = self.tokenizer.apply_chat_template(
            list(chats), tokenize=True, add_generation_prompt=True, return_dict=True
        )
        return [list(row) for row in encoded["input_ids"]]

    def _continuation(self, prompt_ids: List[int], new_ids: np.ndarray) -> str:
        """Text of ``new_ids`` as it reads after the prompt.

        The whole sequence is decoded and the decoded prompt cut off, rather than decoding the new ids alone:
        a word or a multi-byte character may be split between the prompt's last token and the first new one,
        and sentencepiece drops the leading space of a sequence ("▁Paris" alone decodes to "Paris").
        """
        decode = self.tokenizer.decode
        prompt = decode(prompt_ids, skip_special_tokens=True)
        full = decode(list(prompt_ids) + [int(t) for t in new_ids], skip_special_tokens=True)
        if full.startswith(prompt):
            return full[len(prompt):]
        return decode([int(t) for t in new_ids], skip_special_tokens=True)


def _is_chat(value: Any) -> bool:
    """Whether ``value`` is one chat: a non-empty list of message dicts."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(m, dict) for m in value)


TASKS.register(TextGenerationPipeline, name=TextGenerationPipeline.task)
