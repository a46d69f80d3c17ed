"""Record formats: how each kind of record is checked and turned into ``input_ids`` and ``labels``.

Labels follow the Hugging Face convention: ``labels`` is aligned with ``input_ids`` (the model shifts them
for next-token prediction) and ``-100`` marks positions that carry no loss.

- ``alpaca``: ``{"instruction", "input" (optional), "output"}``. With a chat template the record becomes a
  user turn (instruction, plus ``"\\n\\n" + input`` when the input is not empty) and an assistant turn (output),
  encoded as ``chat``. Without one it is the Stanford Alpaca prompt followed by the output and EOS. The loss
  covers only the output tokens and the EOS / end-of-turn token.
- ``chat``: ``{"messages": [{"role", "content"}, ...]}`` rendered with the tokenizer's chat template; the
  loss covers each assistant message's content and the end-of-turn token that closes it.
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}, ...]}``, mapped to ``chat``.
- ``text``: ``{"text"}`` records (or .txt files); the loss covers every token.
- ``classification``: ``{"text", "label"}``; the label is an int or a class name from ``label_names``.

How assistant spans are found in a chat (templates differ, so nothing template-specific is assumed): for
assistant message ``k`` the conversation is rendered up to message ``k`` with the generation prompt
(everything before the answer) and up to and including message ``k`` (everything through the answer's
turn). When the token ids of both renderings are prefixes of the full conversation's ids, the answer is
the tokens between the two lengths. Otherwise (the template renders history differently, or BPE merges
across a boundary) the same two renderings give a character range, or, when they are not text prefixes
either, the message content is searched in the rendered text; the range is mapped to tokens with the
tokenizer's character offsets. Finally the span is cut just after the end-of-turn token: the first
special token (``<|im_end|>``, ``<|eot_id|>``, ``</s>``, ...) that follows the answer's text, so the newline
(or final EOS) a template writes after it carries no loss; a turn without any special token loses its
trailing whitespace tokens instead.
"""

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from ..tokenizers.chat_template import render_chat_template
from .readers import Record

IGNORE_INDEX = -100

FORMATS = ("alpaca", "chat", "sharegpt", "text", "classification")
FORMAT_KEYS = {
    "alpaca": "'instruction' and 'output' (and optional 'input')",
    "chat": "'messages': a list of {'role', 'content'}",
    "sharegpt": "'conversations': a list of {'from', 'value'}",
    "text": "'text'",
    "classification": "'text' and 'label'",
}
FORMAT_NAMES = {
    "alpaca": "an Alpaca",
    "chat": "a chat",
    "sharegpt": "a ShareGPT",
    "text": "a text",
    "classification": "a classification",
}
CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}

# Stanford Alpaca's prompts (github.com/tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)

Example = Tuple[List[int], List[int]]  # (input_ids, labels)


def detect_format(record: Record, task: str) -> str:
    """Pick the format of a dataset from the keys of its first record.

    Args:
        record: the first record.
        task: ``"text_generation"`` or ``"text_classification"``.

    Returns:
        One of :data:`FORMATS`.
    """
    data = record.data
    if not isinstance(data, dict):
        raise ValueError(f"{record.where}: expected a JSON object (a dict), found {_describe(data)}")
    keys = set(data)
    if task == "text_classification":
        if {"text", "label"} <= keys:
            return "classification"
        raise ValueError(
            f"{record.where}: task='text_classification' needs records with keys 'text' and 'label'; "
            f"found keys {sorted(keys)}"
        )
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    expected = "; ".join(f"{name}: {keys_}" for name, keys_ in FORMAT_KEYS.items() if name != "classification")
    raise ValueError(
        f"{record.where}: cannot tell the data format from the record's keys {sorted(keys)}; expected one of "
        f"{expected} (or pass data_format=...; for {{'text', 'label'}} records use task='text_classification')"
    )


# ---------------------------------------------------------------------------------------------- checks


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:60] + '...'}"


def _require_dict(record: Record, fmt: str) -> Dict[str, Any]:
    if not isinstance(record.data, dict):
        raise ValueError(f"{record.where}: expected {FORMAT_NAMES[fmt]} record (an object with {FORMAT_KEYS[fmt]}), "
                         f"found {_describe(record.data)}")
    missing = [k for k in _required_keys(fmt) if k not in record.data]
    if missing:
        raise ValueError(
            f"{record.where}: {FORMAT_NAMES[fmt]} record needs {FORMAT_KEYS[fmt]}; missing {missing}, "
            f"found keys {sorted(record.data)}"
        )
    return record.data


def _required_keys(fmt: str) -> Tuple[str, ...]:
    return {
        "alpaca": ("instruction", "output"),
        "chat": ("messages",),
        "sharegpt": ("conversations",),
        "text": ("text",),
        "classification": ("text", "label"),
    }[fmt]


def _require_str(record: Record, field: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{record.where}: {field} must be a string, found {_describe(value)}")
    return value


def alpaca_fields(record: Record) -> Tuple[str, str, str]:
    """``(instruction, input, output)`` of an Alpaca record (a missing or null input is ``""``)."""
    data = _require_dict(record, "alpaca")
    instruction = _require_str(record, "'instruction'", data["instruction"])
    extra = data.get("input")
    extra = "" if extra is None else _require_str(record, "'input'", extra)
    output = _require_str(record, "'output'", data["output"])
    return instruction, extra, output


def chat_messages(record: Record, fmt: str) -> List[Dict[str, Any]]:
    """The messages of a ``chat`` or ``sharegpt`` record, checked, with ShareGPT turned into role/content."""
    data = _require_dict(record, fmt)
    if fmt == "chat":
        key, role_key, content_key = "messages", "role", "content"
    else:
        key, role_key, content_key = "conversations", "from", "value"
    turns = data[key]
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{record.where}: {key!r} must be a non-empty list of messages, found {_describe(turns)}")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise ValueError(
                f"{record.where}: {key}[{i}] must be an object with {role_key!r} and {content_key!r}, "
                f"found {_describe(turn)}"
            )
        role, content = turn[role_key], turn[content_key]
        if fmt == "sharegpt":
            if role not in SHAREGPT_ROLES:
                raise ValueError(
                    f"{record.where}: {key}[{i}]['from'] is {role!r}; expected one of {sorted(SHAREGPT_ROLES)}"
                )
            message = {"role": SHAREGPT_ROLES[role], "content": content}
        else:
            if role not in CHAT_ROLES:
                raise ValueError(f"{record.where}: {key}[{i}]['role'] is {role!r}; expected one of {list(CHAT_ROLES)}")
            message = dict(turn)
        _require_str(record, f"{key}[{i}][{content_key!r}]", content)
        messages.append(message)
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(
            f"{record.where}: the conversation has no assistant message, so nothing would be learned from it; "
            f"found roles {[m['role'] for m in messages]}"
        )
    return messages


def text_field(record: Record) -> str:
    """The text of a ``text`` record."""
    return _require_str(record, "'text'", _require_dict(record, "text")["text"])


def classification_fields(
    record: Record, label_ids: Optional[Dict[str, int]], num_labels: Optional[int]
) -> Tuple[str, int]:
    """``(text, label id)`` of a classification record.

    Args:
        record: the record.
        label_ids: class name -> id (from ``label_names``), or None when labels must be ints.
        num_labels: the number of classes when known (ints must be in ``[0, num_labels)``).
    """
    data = _require_dict(record, "classification")
    text = _require_str(record, "'text'", data["text"])
    label = data["label"]
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        raise ValueError(f"{record.where}: 'label' must be an int or a class name, found {_describe(label)}")
    if isinstance(label, str):
        if label_ids is None:
            raise ValueError(
                f"{record.where}: label {label!r} is a class name but no label_names were given; pass "
                "label_names=[...] (index = class id) or {id: name}"
            )
        if label not in label_ids:
            raise ValueError(f"{record.where}: unknown label {label!r}; known labels: {list(label_ids)}")
        return text, label_ids[label]
    if label < 0 or (num_labels is not None and label >= num_labels):
        valid = f"[0, {num_labels})" if num_labels is not None else ">= 0"
        raise ValueError(f"{record.where}: label {label} is out of range; expected an int in {valid}")
    return text, label


# ---------------------------------------------------------------------------------------------- encoding


def special_ids(tokenizer) -> Set[int]:
    """Ids of all special tokens (named ones and added tokens flagged special): the end-of-turn candidates."""
    ids = {i for i in tokenizer.all_special_ids if i is not None}
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def has_chat_template(tokenizer) -> bool:
    """Whether the tokenizer carries a chat template."""
    return getattr(tokenizer, "chat_template", None) is not None


def encode_chats(tokenizer, conversations: Sequence[Tuple[Record, List[Dict[str, Any]]]]) -> List[Example]:
    """Render and tokenize conversations; labels only on assistant turns (see the module docstring).

    Args:
        tokenizer: a :class:`~mindformers.tokenizers.PreTrainedTokenizer` (or one with the same API and a
            ``backend_tokenizer``) with a chat template.
        conversations: ``(record, messages)`` pairs; the record is only used in error messages.

    Returns:
        ``(input_ids, labels)`` per conversation.
    """
    if not has_chat_template(tokenizer):
        where = conversations[0][0].where if conversations else "the dataset"
        raise ValueError(
            f"{where}: chat records need a tokenizer with a chat template, but "
            f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} has none; use a chat model's "
            "tokenizer (e.g. AutoTokenizer.from_pretrained('smollm2_135m_instruct')) or set tokenizer.chat_template"
        )
    template = tokenizer.get_chat_template()
    variables = tokenizer.special_tokens_map
    end_ids = special_ids(tokenizer)

    def render(messages: List[Dict[str, Any]], generation_prompt: bool) -> str:
        # Called directly rather than through apply_chat_template: a prefix may be empty (a chat that opens
        # with an assistant message), which apply_chat_template refuses.
        return render_chat_template(template, [messages], add_generation_prompt=generation_prompt, **variables)[0]

    backend = tokenizer.backend_tokenizer
    examples = []
    for record, messages in conversations:
        turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
        texts = [render(messages, False)]
        for k in turns:
            texts += [render(messages[:k], True), render(messages[: k + 1], False)]
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        full = encodings[0]
        ids = list(full.ids)
        labels = [IGNORE_INDEX] * len(ids)
        previous_end_char = 0
        for j, k in enumerate(turns):
            before, through = encodings[1 + 2 * j].ids, encodings[2 + 2 * j].ids
            if len(before) <= len(through) and ids[: len(through)] == through and through[: len(before)] == before:
                start, end = len(before), len(through)
            else:
                before_text, through_text = texts[1 + 2 * j], texts[2 + 2 * j]
                found = _char_range(texts[0], before_text, through_text, messages[k]["content"], previous_end_char)
                if found is None:
                    raise ValueError(
                        f"{record.where}: cannot find assistant message {k} ({_describe(messages[k]['content'])}) "
                        "in the text the chat template renders; the template must write each message's content "
                        "as it is"
                    )
                start, end = _tokens_in(full.offsets, found[0], found[1])
                if found[2]:
                    end = _extend_to_end_of_turn(texts[0], full.offsets, ids, end, end_ids)
            end = _cut_after_end_of_turn(tokenizer, ids, start, end, end_ids)
            labels[start:end] = ids[start:end]
            if end > 0:
                previous_end_char = full.offsets[end - 1][1]
        examples.append((ids, labels))
    return examples


def _char_range(
    full: str, before: str, through: str, content: str, search_from: int
) -> Optional[Tuple[int, int, bool]]:
    """Character range of an assistant turn in the rendered conversation: ``(start, end, is_content_only)``.

    From the two renderings when they are text prefixes of the full rendering (the range is the whole turn);
    else the content searched from ``search_from`` (the range is the content only); None if not found.
    """
    if full.startswith(through) and through.startswith(before):
        return len(before), len(through), False
    position = full.find(content, search_from) if content else -1
    if position < 0:
        return None
    return position, position + len(content), True


def _extend_to_end_of_turn(full: str, offsets, ids: List[int], end: int, end_ids: Set[int]) -> int:
    """After a content-only span: take the end-of-turn special token that follows (after whitespace), if any."""
    i = end
    while i < len(ids) and ids[i] not in end_ids and not full[offsets[i][0]: offsets[i][1]].strip():
        i += 1
    return i + 1 if i < len(ids) and ids[i] in end_ids else end


def _tokens_in(offsets: Sequence[Tuple[int, int]], char_start: int, char_end: int) -> Tuple[int, int]:
    """``[start, end)`` token indices of the tokens that overlap ``[char_start, char_end)``.

    A token that straddles ``char_start`` (BPE merged the prompt's last space with the answer's first word)
    belongs to the answer: it is the token the model has to produce.
    """
    start = next((i for i, (_, e) in enumerate(offsets) if e > char_start), len(offsets))
    end = next((i for i in range(start, len(offsets)) if offsets[i][0] >= char_end), len(offsets))
    return start, end


def _cut_after_end_of_turn(tokenizer, ids: List[int], start: int, end: int, end_ids: Set[int]) -> int:
    """End of the labelled span ``[start, end)``: just after the end-of-turn token.

    That is the first special token after some non-special (content) token; failing that (empty content)
    the last special token; failing that (a template without end-of-turn tokens) the span without its
    trailing whitespace tokens.
    """
    seen_content = False
    for i in range(start, end):
        if ids[i] not in end_ids:
            seen_content = True
        elif seen_content:
            return i + 1
    for i in range(end - 1, start - 1, -1):
        if ids[i] in end_ids:
            return i + 1
    while end > start and not tokenizer.decode([ids[end - 1]]).strip():
        end -= 1
    return end


def alpaca_messages(instruction: str, extra: str, output: str) -> List[Dict[str, str]]:
    """An Alpaca record as a user/assistant chat (for tokenizers with a chat template)."""
    user = instruction + ("\n\n" + extra if extra else "")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def encode_alpaca_prompts(tokenizer, fields: Sequence[Tuple[str, str, str]], where: str) -> List[Example]:
    """Alpaca records without a chat template: Stanford Alpaca prompt, then output + EOS (the only labels).

    Prompt and output are tokenized as one text, as the model will see them when it generates after the
    prompt; the output's tokens are those overlapping its characters (offsets), so a token merged across
    the boundary counts as output.

    Args:
        tokenizer: the tokenizer (needs an EOS token).
        fields: ``(instruction, input, output)`` per record.
        where: the source, for the error when the tokenizer has no EOS.

    Returns:
        ``(input_ids, labels)`` per record.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(
            f"{where}: Alpaca records without a chat template end each output with EOS, but the tokenizer has no "
            "eos_token; set tokenizer.eos_token"
        )
    bos = [tokenizer.bos_token_id] if tokenizer.add_bos_token and tokenizer.bos_token_id is not None else []
    prompts = [
        (ALPACA_PROMPT_INPUT if extra else ALPACA_PROMPT_NO_INPUT).format(instruction=instruction, input=extra)
        for instruction, extra, _ in fields
    ]
    texts = [prompt + output for prompt, (_, _, output) in zip(prompts, fields)]
    examples = []
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    for prompt, text, encoding in zip(prompts, texts, encodings):
        ids = list(encoding.ids)
        start, _ = _tokens_in(encoding.offsets, len(prompt), len(text))
        examples.append((bos + ids + [eos], [IGNORE_INDEX] * (len(bos) + start) + ids[start:] + [eos]))
    return examples


def encode_documents(tokenizer, texts: Sequence[str], where: str) -> List[List[int]]:
    """Each text as ``[BOS (if the tokenizer adds one)] + tokens + [EOS]``, the unit plain-text packing joins."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"{where}: plain-text documents are separated by EOS, but the tokenizer has no eos_token; "
                         "set tokenizer.eos_token")
    bos = [tokenizer.bos_token_id] if tokenizer.add_bos_token and tokenizer.bos_token_id is not None else []
    return [bos + ids + [eos] for ids in _encode_plain(tokenizer, list(texts))]


def _encode_plain(tokenizer, texts: List[str]) -> List[List[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]]


def encode_with_special_tokens(tokenizer, texts: List[str]) -> List[List[int]]:
    """Token ids of texts with the tokenizer's own BOS/EOS (classification inputs)."""
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=True, return_attention_mask=False)["input_ids"]]

