"""Synthetic tasks the embedded model is trained and evaluated on."""


def vocabulary() -> list[str]:
    """The embedded model's word vocabulary: the reasoning task's words, then the long-context tasks'
    new ones appended (so a tokenizer built before they existed keeps every id it had)."""
    from tessera.tasks import reasoning, ruler

    return list(dict.fromkeys(reasoning.vocabulary() + ruler.vocabulary()))
