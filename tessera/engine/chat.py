"""Chat prompts: a conversation rendered by the checkpoint's chat template, or by the plain template.

The checkpoint's template is the Jinja template Hugging Face tokenizers ship (`chat_template` in
`tokenizer_config.json`, or a `chat_template.jinja` file), rendered as transformers'
`apply_chat_template` does: a sandboxed environment with `trim_blocks` / `lstrip_blocks`, the variables
`messages`, `add_generation_prompt`, `bos_token`, `eos_token` and `raise_exception`. Its text already
holds the special tokens it wants, so it is tokenized without adding a BOS.

The plain template, for models without one (the embedded reasoners: their word-level vocabulary has no
role names or turn markers), is the messages' contents in order, joined by a newline; the text is then
tokenized like any prompt. So `llm.chat([{"role": "user", "content": p}])` equals `llm.generate(p)`.
"""

from __future__ import annotations

import json
from pathlib import Path

ROLES = ("system", "user", "assistant", "tool", "developer")


def check_messages(messages) -> list[dict]:
    """A list of {"role": str, "content": str} dicts, or TypeError / ValueError naming what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise TypeError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r:.80}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TypeError(f"messages[{i}] must be a dict with string 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"messages[{i}] has role {m['role']!r}; known: {', '.join(ROLES)}")
    return list(messages)


def load_template(model_dir: Path | None) -> tuple[str | None, dict[str, str]]:
    """(the checkpoint's chat template or None, its special-token strings)."""
    if model_dir is None:
        return None, {}
    cfg_file = model_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
    specials = {}
    for name in ("bos_token", "eos_token"):
        t = cfg.get(name)
        t = t.get("content") if isinstance(t, dict) else t
        if isinstance(t, str):
            specials[name] = t
    tpl = cfg.get("chat_template")
    if isinstance(tpl, list):  # named templates: the default one
        tpl = next((t["template"] for t in tpl if t.get("name") == "default"), None)
    jinja = model_dir / "chat_template.jinja"
    if tpl is None and jinja.is_file():
        tpl = jinja.read_text()
    return tpl, specials


def render(messages: list[dict], template: str | None, specials: dict[str, str]) -> str:
    """The prompt text for a conversation, ending where the assistant's answer starts."""
    if template is None:
        return "\n".join(m["content"] for m in messages)
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(msg):
        raise TemplateError(msg)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=True, **specials)
    except TemplateError as e:
        raise ValueError(f"the chat template failed on these messages: {e}") from e
