"""How the distributed CPU benchmarks write a result: `<name>.json` (the document), `<name>.md` (its table,
by the benchmark's `write_md`), optionally `<name>.png` (its `plot`), then the Markdown on stdout."""

from __future__ import annotations

import json
import os


def save_result(out_dir: str, name: str, doc: dict, write_md, plot=None) -> None:
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, name)
    with open(base + ".json", "w") as fh:
        json.dump(doc, fh, indent=1)
    write_md(base + ".md", doc)
    if plot is not None:
        plot(base + ".png", doc)
    with open(base + ".md") as fh:
        print(fh.read())
