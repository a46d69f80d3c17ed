"""Chat templates: Jinja2 templates that turn a list of messages into the model's prompt text.

Rendered the way transformers renders them (``utils/chat_template_utils.py``), so a template from a model's
tokenizer_config.json, chat_template.jinja or GGUF metadata gives the same text here:

- an ``ImmutableSandboxedEnvironment`` (templates come from downloaded files and are untrusted code) with
  ``trim_blocks=True`` and ``lstrip_blocks=True`` and the ``loopcontrols`` extension;
- ``tojson`` that does not HTML-escape (Jinja's own does) and takes ``indent``/``separators``/``sort_keys``;
- the globals ``raise_exception(message)`` and ``strftime_now(format)``;
- a ``{% generation %}...{% endgeneration %}`` block that renders its body (transformers uses it to mark
  assistant tokens; here it is accepted so such templates parse);
- messages are copied into plain dicts/lists/str/numbers before the template sees them.
"""

import functools
import json
from datetime import datetime
from typing import Any, Dict, List, Optional, Sequence

import jinja2
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class _GenerationBlock(Extension):
    """``{% generation %}body{% endgeneration %}`` renders ``body`` unchanged."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str) -> jinja2.Template:
    """Compile ``template`` in the sandboxed environment described in the module docstring (cached)."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ValueError(f"the chat template is not valid Jinja2 (line {exc.lineno}: {exc.message})") from None


def _plain(value: Any) -> Any:
    """A copy of ``value`` made only of dict/list/tuple/str/int/float/bool/None, so the sandbox sees no methods
    of rich objects; anything else becomes the placeholder ``"<TypeName>"`` (as transformers does)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    # Subclasses (str enums, numpy.float64, ...) are cut back to the base type.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalar such as np.bool_
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def render_chat_template(
    template: str,
    conversations: Sequence[Sequence[Dict[str, Any]]],
    *,
    add_generation_prompt: bool = False,
    tools: Optional[List[Dict[str, Any]]] = None,
    documents: Optional[List[Dict[str, Any]]] = None,
    **template_kwargs: Any,
) -> List[str]:
    """Render one prompt string per conversation.

    Args:
        template: the Jinja2 chat template.
        conversations: a list of conversations, each a list of ``{"role": ..., "content": ...}`` dicts.
            Keys whose value is None are dropped (templates test for a missing key, not for None).
        add_generation_prompt: ask the template to end with the header of a new assistant turn.
        tools, documents: passed to the template as ``tools`` and ``documents`` (JSON-schema dicts).
        template_kwargs: further template variables (``bos_token``, ``enable_thinking``, ...).

    Returns:
        The rendered strings, one per conversation.
    """
    compiled = compile_chat_template(template)
    variables = {key: _plain(value) for key, value in template_kwargs.items()}
    rendered = []
    for index, conversation in enumerate(conversations):
        messages = []
        for message in conversation:
            if not isinstance(message, dict):
                raise TypeError(
                    f"conversation {index}: each message must be a dict with 'role' and 'content', "
                    f"found {type(message).__name__}: {message!r}"
                )
            messages.append({k: _plain(v) for k, v in message.items() if v is not None})
        rendered.append(
            compiled.render(
                messages=messages,
                tools=_plain(tools),
                documents=_plain(documents),
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        )
    return rendered
