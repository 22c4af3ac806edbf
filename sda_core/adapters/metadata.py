"""diffusers' `lora_adapter_metadata`: the PEFT config (lora_alpha, alpha_pattern, rank_pattern, r,
use_rslora) that diffusers writes into safetensors metadata instead of alpha tensors.

The metadata is untrusted text from the file. Every value is checked here (a number, finite; ranks whole
and positive) and every pattern key compiled with the linear matcher of patterns.py, so a bad file gives an
error naming the file and the key, never a raw `float()` or `.items()` failure, a NaN scale or a hang.
"""
from __future__ import annotations

import json
import math
import time
from numbers import Real
from typing import Any, Mapping

from .errors import AdapterError
from .patterns import MATCH_SECONDS, PatternError, TailPattern

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"
MAX_RANK = 1 << 20


def _number(value: Any) -> float | None:
    """A metadata number: JSON numbers, or strings holding one (some writers quote them)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, Real):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


class PeftConfig:
    """The checked PEFT config of one file; `alpha_for(name)` is PEFT's per-module alpha lookup."""

    def __init__(self, cfg: Mapping[str, Any], label: str):
        self.label = label

        def get(key: str, default=None):
            return cfg.get(f"transformer.{key}", cfg.get(key, default))

        self.lora_alpha = self._alpha(get("lora_alpha"), "lora_alpha")
        self._rank(get("r"), "r")
        self.use_rslora = self._flag(get("use_rslora", False), "use_rslora")
        self.alpha_pattern = self._patterns(get("alpha_pattern"), "alpha_pattern", self._alpha)
        self._patterns(get("rank_pattern"), "rank_pattern", self._rank)  # checked; ranks come from the tensors
        self._deadline: float | None = None
        self._cache: dict[str, tuple[float | None, str]] = {}

    # -- checks --------------------------------------------------------------------------------------------
    def _where(self, key: str) -> str:
        return f"{self.label}: {DIFFUSERS_METADATA_KEY} {key}"

    def _alpha(self, value: Any, key: str) -> float | None:
        if value is None:
            return None
        number = _number(value)
        if number is None or not math.isfinite(number):
            raise AdapterError(f"{self._where(key)} is {value!r}; expected a finite number (the LoRA alpha)")
        return number

    def _rank(self, value: Any, key: str) -> int | None:
        if value is None:
            return None
        number = _number(value)
        if number is None or not math.isfinite(number) or number != int(number) or not 1 <= number <= MAX_RANK:
            raise AdapterError(f"{self._where(key)} is {value!r}; expected a whole number from 1 to {MAX_RANK} "
                               "(a LoRA rank)")
        return int(number)

    def _flag(self, value: Any, key: str) -> bool:
        if isinstance(value, bool) or value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise AdapterError(f"{self._where(key)} is {value!r}; expected true or false")

    def _patterns(self, value: Any, key: str, check) -> dict[str, tuple[TailPattern, Any]]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise AdapterError(f"{self._where(key)} is a {type(value).__name__} ({_short(value)}); expected an "
                               "object mapping module-name patterns to numbers")
        out = {}
        for pattern, raw in value.items():
            where = f"{key}[{pattern!r}]"
            checked = check(raw, where)
            try:
                out[str(pattern)] = (TailPattern(str(pattern)), checked)
            except PatternError as exc:
                raise AdapterError(f"{self._where(where)}: {exc}; PEFT reads these keys as regular expressions "
                                   "matched against the end of a module name, and this one cannot be read "
                                   "safely") from None
        return out

    # -- lookup ----------------------------------------------------------------------------------------------
    def alpha_for(self, name: str) -> tuple[float | None, str]:
        """(alpha, which metadata key gave it) for module `name`, as PEFT picks it.

        PEFT takes the first alpha_pattern key that matches the module name or a dotted tail of it (an exact
        name first here: it is the same match, and the most specific one), else lora_alpha.
        """
        if name in self._cache:
            return self._cache[name]
        if self._deadline is None:
            self._deadline = time.monotonic() + MATCH_SECONDS
        found: tuple[float | None, str] = (self.lora_alpha, f"{DIFFUSERS_METADATA_KEY} lora_alpha")
        if name in self.alpha_pattern:
            found = (self.alpha_pattern[name][1], f"{DIFFUSERS_METADATA_KEY} alpha_pattern[{name!r}]")
        else:
            for key, (pattern, alpha) in self.alpha_pattern.items():
                try:
                    hit = pattern.matches(name, self._deadline)
                except PatternError as exc:
                    raise AdapterError(f"{self._where('alpha_pattern')}: {exc} for the file's "
                                       f"{len(self.alpha_pattern)} patterns; the file is refused") from None
                if hit:
                    found = (alpha, f"{DIFFUSERS_METADATA_KEY} alpha_pattern[{key!r}]")
                    break
        self._cache[name] = found
        return found


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def peft_config(metadata: Mapping[str, str], label: str) -> PeftConfig | None:
    """The file's PEFT config, or None when it has none (or one without any alpha)."""
    raw = metadata.get(DIFFUSERS_METADATA_KEY)
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except (TypeError, ValueError):
        raise AdapterError(f"{label}: its {DIFFUSERS_METADATA_KEY} is not valid JSON, so the alphas it holds "
                           "cannot be read; the file is damaged (diffusers writes it with json.dumps)") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{label}: its {DIFFUSERS_METADATA_KEY} is a {type(cfg).__name__} "
                           f"({_short(cfg)}); expected a JSON object (the PEFT config diffusers writes)")
    config = PeftConfig(cfg, label)
    return config if config.lora_alpha is not None or config.alpha_pattern else None
