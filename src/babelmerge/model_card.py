"""The model card (README.md) and the recorded config written next to every merged model."""

from __future__ import annotations

from pathlib import Path

import yaml

from . import __version__
from .merge_config import MergeConfig
from .methods import MergeMethod


def write_model_card(cfg: MergeConfig, method: MergeMethod, out: Path) -> None:
    """Write ``babelmerge_config.yaml`` (the exact config, re-runnable) and a README.md model card."""
    recorded = cfg.model_dump(mode="json", exclude_defaults=True)
    recorded["merge_method"] = cfg.merge_method
    config_yaml = yaml.safe_dump(recorded, sort_keys=False, allow_unicode=True)
    (out / "babelmerge_config.yaml").write_text(config_yaml, encoding="utf-8")
    bases = [cfg.base_model] if cfg.base_model else []
    sources = bases + [m.model for m in cfg.models if m.model not in bases]
    front = yaml.safe_dump(
        {"library_name": "transformers", "tags": ["babelmerge", "merge"], "base_model": sources},
        sort_keys=False,
        allow_unicode=True,
    )
    models = "\n".join(f"- `{m}`" for m in sources)
    card = f"""---
{front}---
# {cfg.name or "Merged model"}

Merged with [babelmerge](https://pypi.org/project/babelmerge/) {__version__} using **{method.name}**.

{method.summary}

## Models

{models}

## Configuration

Re-run with `babelmerge merge babelmerge_config.yaml OUT_DIR`:

```yaml
{config_yaml}```
"""
    (out / "README.md").write_text(card, encoding="utf-8")
