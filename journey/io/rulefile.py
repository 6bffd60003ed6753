"""Rule files on disk: a TOML or YAML file read into the core's :class:`Config`,
and the fitted CLV model file that ``[clv] model`` names (relative to the rule
file). Every shell loads its rules through here; validation is the core's."""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson

from ..core.clv import Model
from ..core.config import Config, ConfigError


def read_table(path: str | Path) -> dict:
    """A TOML (``.toml``) or YAML (``.yaml``/``.yml``) file as a dict; ConfigError if unreadable."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{p}: cannot read: {e.strerror}"]) from None
    yaml_file = p.suffix.lower() in (".yaml", ".yml")
    try:
        if yaml_file:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text.decode())
    except Exception as e:  # the parsers' own messages say where
        raise ConfigError([f"{p}: not valid {'YAML' if yaml_file else 'TOML'}: {e}"]) from None
    return data


def read_model(path: str, source: str) -> Model:
    """The CLV model file ``path`` (relative to the rule file ``source``); ValueError says why not."""
    p = Path(path)
    if not p.is_absolute() and source not in ("defaults", ""):
        p = Path(source).parent / p
    try:
        model = Model.from_dict(orjson.loads(p.read_bytes()))
    except OSError as e:
        raise ValueError(f"cannot read {p}: {e.strerror} (create it with: journey clv fit)") from None
    except (ValueError, orjson.JSONDecodeError) as e:
        raise ValueError(f"{p}: {e}") from None
    refused = model.problems()
    if refused:
        raise ValueError(f"{p} is refused: {'; '.join(refused)}; fit it again (journey clv fit) on more history")
    return model


def config_from(data: dict | None, source: str = "defaults") -> Config:
    """A configuration from a rule file's contents, reading the model file it names."""
    return Config(data, source=source, load_model=read_model)


def load_config(path: str | Path | None) -> Config:
    """Load and validate a TOML (``.toml``) or YAML (``.yaml``/``.yml``) rule file."""
    if path is None:
        return Config()
    return config_from(read_table(path), source=str(Path(path)))
