"""Run configuration: dataclasses, validation with messages naming the key, TOML load/save."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tomllib
import urllib.parse
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "data" / "presets"
MAX_PRESET_BYTES = 256 * 1024

LIMITS = {
    "proposers": (1, 8),
    "layers": (1, 4),
    "temperature": (0.0, 2.0),
    "max_tokens": (1, 32768),
    "timeout_s": (1.0, 3600.0),
    "proposer_timeout_s": (1.0, 3600.0),
    "max_cost_usd": (0.0, 10_000.0),
    "input_cost_per_mtok": (0.0, 100_000.0),
    "output_cost_per_mtok": (0.0, 100_000.0),
    "critique_rounds": (1, 3),
    "cascade_agreement": (0.0, 1.0),
}
PRICE_KEYS = ("input_cost_per_mtok", "output_cost_per_mtok")
# How the candidates of the last proposer layer become the final answer (moa/strategies.py).
STRATEGIES = ("synthesize", "rank", "select", "vote", "critique")
_PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$")


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range; the message names it."""


@dataclass
class ModelSpec:
    """One model call's settings: a proposer or the aggregator."""

    model: str
    label: str | None = None
    api_base: str | None = None
    temperature: float = 0.7
    max_tokens: int = 512
    system_prompt: str | None = None
    timeout_s: float | None = None
    api_key_env: str | None = None  # env var holding the key for api_base (never the key itself)
    # USD per million tokens; set both to price a model litellm does not know (0: self-hosted).
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None

    @property
    def own_prices(self) -> bool:
        """Priced in the spec itself (both per-million prices set), before litellm's map."""
        return self.input_cost_per_mtok is not None and self.output_cost_per_mtok is not None

    @property
    def display(self) -> str:
        return self.label or self.model

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0] if "/" in self.model else ""


@dataclass
class RunConfig:
    proposers: list[ModelSpec]
    aggregator: ModelSpec
    name: str = "Untitled"
    layers: int = 1
    proposer_timeout_s: float = 120.0
    max_cost_usd: float | None = None
    aggregator_prompt: str | None = None
    # Called only if the aggregator fails (after its retries): same prompt, same candidates.
    fallback_aggregator: ModelSpec | None = None
    # The most calls at once per provider (`local`) or per api_base URL, across every run and
    # evaluation in this process: a server that serves one request at a time needs 1.
    concurrency: dict[str, int] = field(default_factory=dict)
    # What proposers see of earlier conversation turns: every turn's agreed final answer
    # ("final", the reference MoA bot's convention) or each proposer's own earlier answer ("own").
    history: str = "final"
    strategy: str = "synthesize"  # one of STRATEGIES
    judge: ModelSpec | None = None  # rank: this one model ranks instead of every proposer
    critic: ModelSpec | None = None  # critique: the critic (default: the aggregator)
    critique_rounds: int = 1
    cascade: bool = False  # answer with two samples first; run the panel only if they disagree
    cascade_model: ModelSpec | None = None  # the cascade's model (default: proposers 1 and 2)
    cascade_agreement: float = 0.6

    @property
    def strategy_label(self) -> str:
        """`vote`, `synthesize+cascade`: the strategy as History and Evaluate name it."""
        return self.strategy + ("+cascade" if self.cascade else "")

    def timeout_for(self, spec: ModelSpec) -> float:
        return spec.timeout_s if spec.timeout_s is not None else self.proposer_timeout_s

    def models(self) -> list[ModelSpec]:
        """Every model the run may call (the fallback aggregator too, if there is one)."""
        fallback = [self.fallback_aggregator] if self.fallback_aggregator is not None else []
        extra = [m for m in (self.judge, self.critic, self.cascade_model) if m is not None]
        return [*self.proposers, self.aggregator, *fallback, *extra]

    def with_overrides(
        self,
        proposers: list[str] | None = None,
        aggregator: str | None = None,
        layers: int | None = None,
        strategy: str | None = None,
        cascade: bool | None = None,
    ) -> RunConfig:
        """The CLI's --proposer/--aggregator/--layers applied on top of this config."""
        cfg = replace(self)
        if proposers:
            cfg.proposers = [_spec_from_cli(m) for m in proposers]
        if aggregator:
            new = _spec_from_cli(aggregator)
            cfg.aggregator = replace(
                self.aggregator, model=new.model, api_base=new.api_base, label=None
            )
        if layers is not None:
            cfg.layers = layers
        if strategy is not None:
            cfg.strategy = strategy
        if cascade is not None:
            cfg.cascade = cascade
        return validate(cfg)


def _spec_from_cli(model: str) -> ModelSpec:
    # "model@http://host/v1" lets the CLI point one model at an OpenAI-compatible server.
    if "@" in model and "://" in model.split("@", 1)[1]:
        name, base = model.split("@", 1)
        return ModelSpec(model=name, api_base=base)
    return ModelSpec(model=model)


# ---------------------------------------------------------------- validation

_MODEL_KEYS: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "label": (str,),
    "api_base": (str,),
    "temperature": (int, float),
    "max_tokens": (int,),
    "system_prompt": (str,),
    "timeout_s": (int, float),
    "api_key_env": (str,),
    "input_cost_per_mtok": (int, float),
    "output_cost_per_mtok": (int, float),
}
_RUN_KEYS: dict[str, tuple[type, ...]] = {
    "name": (str,),
    "layers": (int,),
    "proposer_timeout_s": (int, float),
    "max_cost_usd": (int, float),
    "aggregator_prompt": (str,),
    "aggregator": (dict,),
    "fallback_aggregator": (dict,),
    "proposers": (list,),
    "concurrency": (dict,),
    "history": (str,),
    "strategy": (str,),
    "judge": (str, dict),
    "critic": (str, dict),
    "critique_rounds": (int,),
    "cascade": (bool,),
    "cascade_model": (str, dict),
    "cascade_agreement": (int, float),
}
CONCURRENCY_RANGE = (1, 64)
HISTORY_MODES = ("final", "own")
# Strategy models may be written as a model id string or as a full model table.
_STRATEGY_MODELS = ("judge", "critic", "cascade_model")
_TYPE_NAMES = {
    bool: "true or false",
    str: "a string",
    int: "an integer",
    float: "a number",
    dict: "a table",
    list: "a list",
}


def _check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        want = " or ".join(dict.fromkeys(_TYPE_NAMES[t] for t in types))
        raise ConfigError(f"{where} must be {want}, got {type(value).__name__} {value!r:.60}")


def _check_range(where: str, key: str, value: float) -> None:
    lo, hi = LIMITS[key]
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{where} = {value:g} is out of range: allowed {lo:g}..{hi:g}")


def _model_from_dict(where: str, d: Any) -> ModelSpec:
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a table with at least `model`, got {d!r:.60}")
    unknown = sorted(set(d) - set(_MODEL_KEYS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(_MODEL_KEYS)})"
        )
    if "model" not in d:
        raise ConfigError(
            f"{where}.model is missing: name a litellm model id, e.g. 'local/smollm2-135m'"
        )
    for key, value in d.items():
        _check_type(f"{where}.{key}", value, _MODEL_KEYS[key])
        if key in LIMITS:
            _check_range(f"{where}.{key}", key, value)
    spec = ModelSpec(**d)
    spec.model = spec.model.strip()
    if not spec.model:
        raise ConfigError(
            f"{where}.model is empty: name a litellm model id, e.g. 'local/smollm2-135m'"
        )
    if spec.api_base is not None:
        spec.api_base = spec.api_base.strip() or None  # its form is checked in validate()
    if spec.api_key_env is not None and not re.match(
        r"^[A-Za-z_][A-Za-z0-9_]{0,127}$", spec.api_key_env
    ):
        raise ConfigError(
            f"{where}.api_key_env must be the NAME of an environment variable (e.g. 'VLLM_API_KEY'), "
            "never the key itself"
        )
    if spec.temperature is not None:
        spec.temperature = float(spec.temperature)
    if spec.timeout_s is not None:
        spec.timeout_s = float(spec.timeout_s)
    check_prices(where, spec)
    return spec


def check_prices(where: str, spec: ModelSpec) -> None:
    """Prices come in pairs: one without the other would price half of every call."""
    given = [k for k in PRICE_KEYS if getattr(spec, k) is not None]
    if len(given) == 1:
        missing = next(k for k in PRICE_KEYS if k not in given)
        raise ConfigError(
            f"{where}.{given[0]} is set but {where}.{missing} is not: set both (USD per million "
            "tokens; 0 for a self-hosted model)"
        )
    for k in given:
        setattr(spec, k, float(getattr(spec, k)))


# A DNS name or IPv4 address (underscores too: Docker service names have them), or IPv6.
_HOST = re.compile(
    r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$|^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*$"
)
_API_BASE_FORM = "http(s)://host[:port][/path], e.g. 'http://127.0.0.1:11434/v1'"


def check_api_base(where: str, url: str | None) -> None:
    """An api_base must be http(s)://host[:port][/path]: no spaces, credentials or query."""
    if url is None:
        return
    if re.search(r"\s", url):
        raise ConfigError(f"{where} contains a space or line break: remove it ({_API_BASE_FORM})")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where} = {url!r:.80} is not an http(s) URL: use {_API_BASE_FORM}")
    if "@" in parts.netloc:
        # The value itself is not repeated: it holds a password.
        raise ConfigError(
            f"{where} holds credentials (user:password@): remove them, put the key in an "
            "environment variable and name that variable in api_key_env"
        )
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if not port_ok or not _HOST.match(parts.hostname or ""):
        raise ConfigError(
            f"{where} = {url!r:.80} has no valid host[:port] (port 1..65535): use {_API_BASE_FORM}"
        )
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise ConfigError(
            f"{where} = {url!r:.80} has a query or fragment ('?…', '#…'): remove it, "
            f"use {_API_BASE_FORM}"
        )


def from_dict(d: Any) -> RunConfig:
    """Build and validate a RunConfig from parsed TOML (or any plain dict)."""
    if not isinstance(d, dict):
        raise ConfigError("a run config must be a table of keys")
    unknown = sorted(set(d) - set(_RUN_KEYS))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} (allowed: {', '.join(_RUN_KEYS)})")
    for key, value in d.items():
        _check_type(key, value, _RUN_KEYS[key])
        if key in LIMITS and key != "proposers":
            _check_range(key, key, value)
    if "aggregator" not in d:
        raise ConfigError("[aggregator] is missing: add a table with at least `model`")
    if "proposers" not in d or not d["proposers"]:
        raise ConfigError("[[proposers]] is missing: add 1..8 proposer tables with `model`")
    cfg = RunConfig(
        proposers=[_model_from_dict(f"proposers[{i}]", p) for i, p in enumerate(d["proposers"])],
        aggregator=_model_from_dict("aggregator", d["aggregator"]),
        fallback_aggregator=(
            _model_from_dict("fallback_aggregator", d["fallback_aggregator"])
            if "fallback_aggregator" in d
            else None
        ),
        name=d.get("name", "Untitled"),
        layers=d.get("layers", 1),
        proposer_timeout_s=float(d.get("proposer_timeout_s", 120.0)),
        max_cost_usd=None if d.get("max_cost_usd") is None else float(d["max_cost_usd"]),
        aggregator_prompt=d.get("aggregator_prompt"),
        concurrency=dict(d.get("concurrency") or {}),
        history=d.get("history", "final"),
        strategy=d.get("strategy", "synthesize"),
        critique_rounds=d.get("critique_rounds", 1),
        cascade=d.get("cascade", False),
        cascade_agreement=float(d.get("cascade_agreement", 0.6)),
    )
    for key in _STRATEGY_MODELS:
        if key in d:
            value = d[key]
            if isinstance(value, str):  # judge = "model" (or "model@http://host/v1")
                spec = _spec_from_cli(value.strip())
                value = {"model": spec.model, "temperature": 0.2}
                if spec.api_base:
                    value["api_base"] = spec.api_base
            setattr(cfg, key, _model_from_dict(key, value))
    return validate(cfg)


def validate(cfg: RunConfig) -> RunConfig:
    """Range checks on a built config (also used after CLI/UI overrides)."""
    n = len(cfg.proposers)
    lo, hi = LIMITS["proposers"]
    if not lo <= n <= hi:
        raise ConfigError(f"proposers: {n} given, allowed {lo}..{hi}")
    _check_type("layers", cfg.layers, (int,))
    _check_range("layers", "layers", cfg.layers)
    _check_range("proposer_timeout_s", "proposer_timeout_s", cfg.proposer_timeout_s)
    if cfg.max_cost_usd is not None:
        _check_range("max_cost_usd", "max_cost_usd", cfg.max_cost_usd)
    if not cfg.name.strip():
        raise ConfigError("name is empty: give the config a name")
    if cfg.history not in HISTORY_MODES:
        raise ConfigError(
            f'history = {cfg.history!r:.40} is not allowed: use "final" (every model sees each '
            'earlier turn\'s final answer) or "own" (each proposer sees its own earlier answers)'
        )
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy = {cfg.strategy!r:.40} is not one of {', '.join(STRATEGIES)}")
    _check_type("critique_rounds", cfg.critique_rounds, (int,))
    _check_range("critique_rounds", "critique_rounds", cfg.critique_rounds)
    _check_type("cascade", cfg.cascade, (bool,))
    _check_range("cascade_agreement", "cascade_agreement", cfg.cascade_agreement)
    if cfg.aggregator_prompt is not None and not cfg.aggregator_prompt.strip():
        cfg.aggregator_prompt = None
    # Here, not when reading a table: configs from TOML, the form and CLI overrides
    # (`model@URL`) all pass through validate().
    where = [(f"proposers[{i}]", p) for i, p in enumerate(cfg.proposers)]
    where += [("aggregator", cfg.aggregator), ("fallback_aggregator", cfg.fallback_aggregator)]
    where += [(k, getattr(cfg, k)) for k in _STRATEGY_MODELS]
    for name, spec in where:
        if spec is not None:
            check_api_base(f"{name}.api_base", spec.api_base)
    cfg.concurrency = check_concurrency(cfg.concurrency)
    return cfg


def endpoint_key(api_base: str) -> str:
    """An api_base as a [concurrency] key: no trailing '/', scheme and host in lower case."""
    parts = urllib.parse.urlsplit(api_base.strip())
    return urllib.parse.urlunsplit(
        (parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/"), "", "")
    )


def check_concurrency(table: Any) -> dict[str, int]:
    """[concurrency]: provider name or api_base URL → the most calls at once (1..64)."""
    _check_type("concurrency", table, (dict,))
    lo, hi = CONCURRENCY_RANGE
    out: dict[str, int] = {}
    for key, value in table.items():
        where = f"concurrency.{json.dumps(key)}"
        if not isinstance(key, str) or not key.strip():
            raise ConfigError(
                f"{where}: a key must name a provider (e.g. local) or an api_base URL"
            )
        if "://" in key:
            check_api_base(where, key)
            name = endpoint_key(key)
        elif re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", key.strip()):
            name = key.strip()  # a provider; one nobody uses yet is fine (it limits nothing)
        else:
            raise ConfigError(
                f"{where}: not a provider name (like local or openai) nor an http(s) api_base "
                f"URL ({_API_BASE_FORM})"
            )
        _check_type(where, value, (int,))
        if not lo <= value <= hi:
            raise ConfigError(
                f"{where} = {value} is out of range: the most calls at once, {lo}..{hi}"
            )
        out[name] = value
    return out


def concurrency_for(cfg: RunConfig, spec: ModelSpec) -> tuple[str, int] | None:
    """The [concurrency] entry that limits `spec`'s calls: its api_base's, else its provider's."""
    if spec.api_base:
        key = endpoint_key(spec.api_base)
        if key in cfg.concurrency:
            return key, cfg.concurrency[key]
    provider = spec.provider or spec.model
    if provider in cfg.concurrency:
        return provider, cfg.concurrency[provider]
    return None


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain dict in TOML layout, without keys that hold defaults of None."""

    def model(spec: ModelSpec) -> dict[str, Any]:
        return {
            f.name: getattr(spec, f.name) for f in fields(spec) if getattr(spec, f.name) is not None
        }

    out: dict[str, Any] = {
        "name": cfg.name,
        "layers": cfg.layers,
        "proposer_timeout_s": cfg.proposer_timeout_s,
    }
    if cfg.max_cost_usd is not None:
        out["max_cost_usd"] = cfg.max_cost_usd
    if cfg.aggregator_prompt is not None:
        out["aggregator_prompt"] = cfg.aggregator_prompt
    if cfg.history != "final":
        out["history"] = cfg.history
    out["aggregator"] = model(cfg.aggregator)
    if cfg.fallback_aggregator is not None:
        out["fallback_aggregator"] = model(cfg.fallback_aggregator)
    # Strategy keys only when they differ from the defaults: older configs read back unchanged.
    if cfg.strategy != "synthesize":
        out["strategy"] = cfg.strategy
    if cfg.critique_rounds != 1:
        out["critique_rounds"] = cfg.critique_rounds
    if cfg.cascade:
        out["cascade"] = True
    if cfg.cascade_agreement != 0.6:
        out["cascade_agreement"] = cfg.cascade_agreement
    for key in _STRATEGY_MODELS:
        if getattr(cfg, key) is not None:
            out[key] = model(getattr(cfg, key))
    out["proposers"] = [model(p) for p in cfg.proposers]
    if cfg.concurrency:
        out["concurrency"] = dict(cfg.concurrency)
    return out


# ---------------------------------------------------------------- TOML


def loads(text: str, source: str = "config") -> RunConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source} is not valid TOML: {e}") from None
    try:
        return from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load(path: str | os.PathLike[str]) -> RunConfig:
    p = Path(path)
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode) and not stat.S_ISDIR(st.st_mode):  # FIFO, /dev/zero…
            raise ConfigError(f"config file {p} is not a regular file")
        size = st.st_size
        if size > MAX_PRESET_BYTES:
            raise ConfigError(
                f"{p} is {size:,} bytes; a config file may be at most {MAX_PRESET_BYTES:,} bytes"
            )
        text = p.read_text(encoding="utf-8")
    except ConfigError:
        raise
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {p} is a directory, not a TOML file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {p}: {e.strerror}") from None
    return loads(text, source=p.name)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps(cfg: RunConfig) -> str:
    d = to_dict(cfg)
    tables = ("aggregator", "fallback_aggregator", *_STRATEGY_MODELS, "proposers", "concurrency")
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if k not in tables]
    for table in ("aggregator", "fallback_aggregator", *_STRATEGY_MODELS):
        if table in d:
            lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in d[table].items()]
    if "concurrency" in d:
        # Keys are quoted: an api_base URL is not a bare TOML key.
        lines += ["", "[concurrency]"]
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in d["concurrency"].items()]
    for p in d["proposers"]:
        lines += ["", "[[proposers]]"] + [f"{k} = {_toml_value(v)}" for k, v in p.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- presets


def check_preset_name(name: str) -> str:
    name = name.strip()
    if name.lower().endswith(".toml"):
        name = name[:-5]
    if not _PRESET_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"preset name {name!r:.80} is not allowed: use 1-64 letters, digits, spaces, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def preset_path(name: str, presets_dir: Path | None = None) -> Path:
    return (presets_dir or PRESETS_DIR) / f"{check_preset_name(name)}.toml"


def list_presets(presets_dir: Path | None = None) -> list[str]:
    d = presets_dir or PRESETS_DIR
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def load_preset(name: str, presets_dir: Path | None = None) -> RunConfig:
    path = preset_path(name, presets_dir)
    if not path.is_file():
        have = ", ".join(list_presets(presets_dir)) or "none"
        raise ConfigError(f"no preset named {name!r:.80} (available: {have})")
    return load(path)


# Presets shipped in data/presets/: read-only in the app (a copy can be saved under another
# name). A preset added to that folder for everyone must be listed here.
BUNDLED_PRESETS = frozenset({"local-quick", "local-demo", "local-families"})


def is_bundled(name: str) -> bool:
    return name in BUNDLED_PRESETS


def _refuse_bundled(name: str, verb: str) -> None:
    if is_bundled(name):
        raise ConfigError(
            f"preset {name!r} comes with MoA Studio and is read-only, so it cannot be {verb}; "
            "save a copy under another name (Save as preset) and change that"
        )


def delete_preset(name: str, presets_dir: Path | None = None) -> None:
    """Remove a user preset; bundled presets are refused with a message saying so."""
    name = check_preset_name(name)
    _refuse_bundled(name, "deleted")
    path = preset_path(name, presets_dir)
    if not path.is_file():
        raise ConfigError(f"no preset named {name!r:.80}")
    path.unlink()


def rename_preset(old: str, new: str, presets_dir: Path | None = None) -> Path:
    """Save user preset `old` as `new` (its `name` too) and remove `old`."""
    old, new = check_preset_name(old), check_preset_name(new)
    _refuse_bundled(old, "renamed")
    if new == old:
        raise ConfigError(f"the preset is already called {new!r}")
    if is_bundled(new) or preset_path(new, presets_dir).exists():
        raise ConfigError(f"a preset named {new!r} exists already: pick another name")
    cfg = load_preset(old, presets_dir)
    path = save_preset(cfg, new, presets_dir)
    preset_path(old, presets_dir).unlink()
    return path


def save_preset(cfg: RunConfig, name: str, presets_dir: Path | None = None) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves half a preset."""
    path = preset_path(name, presets_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".toml.tmp{os.getpid()}")
    tmp.write_text(dumps(replace(cfg, name=check_preset_name(name))), encoding="utf-8")
    os.replace(tmp, path)
    return path
