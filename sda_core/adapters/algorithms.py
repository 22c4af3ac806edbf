"""One adapted layer per object, holding only the small factors; the delta is built on demand.

The maths is LyCORIS's functional API (lycoris.functional.locon / loha / lokr), pinned to its eager torch
backend so a delta is the same on every device and never triggers a compile mid-patch. Scaling follows
LyCORIS and ComfyUI: alpha/rank, except a LoKr whose two halves are both full matrices, which uses scale 1
whatever alpha the file stores (the trainers disagree; the loaders agree, so we follow the loaders).

Every scale is checked (finite, |scale| ≤ MAX_SCALE) and every delta is checked finite when built, naming
the layer: a NaN or overflowing change would otherwise turn every image black far from its cause.

Shapes are derived from factor shapes only, so a file is checked against the model without building any
full-size delta (a full-rank Z-Image LoKr would need as much memory as the model).
"""
from __future__ import annotations

import math
from typing import ClassVar, Mapping

import torch
from lycoris.functional import lokr as ly_lokr
from lycoris.functional import loha as ly_loha
from lycoris.functional import locon as ly_locon

from .errors import AdapterError
from .keys import ALGO_ROLES
from .layout import transform_delta

BACKEND = "torch"
# Trainers write scales alpha/rank from about 0.01 to 16 (rsLoRA alpha 32 at rank 4 gives 16); a thousand is far
# beyond any of them, and a larger one comes from a damaged or crafted file.
MAX_SCALE = 1000.0


class FactorError(ValueError):
    """Factors that do not make a valid module; load_adapter adds the file's label."""


def fits(natural: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a delta of shape `natural` can be laid onto a weight of `shape` (as ComfyUI's reshape would)."""
    natural, shape = tuple(natural), tuple(shape)
    if natural == shape:
        return True

    def strip(s: tuple[int, ...]) -> tuple[int, ...]:
        while len(s) > 2 and s[-1] == 1:
            s = s[:-1]
        return s

    if strip(natural) == strip(shape):
        return True
    # A conv kernel factored as (out, in*k*k), as LyCORIS does without tucker.
    return len(natural) == 2 and len(shape) > 2 and natural == (shape[0], math.prod(shape[1:]))


def _fmt(shape) -> str:
    """A shape as people write it: 768×256."""
    return "×".join(str(int(s)) for s in shape)


def check_finite_delta(delta: torch.Tensor, source: str, layer: str, dtype: torch.dtype) -> None:
    """AdapterError naming the layer when a change to its weight holds NaN or Inf."""
    if bool(torch.isfinite(delta).all()):
        return
    raise AdapterError(f"{source}: layer {layer}: the adapter's change to the weight is not finite in "
                       f"{str(dtype).replace('torch.', '')} (its factors multiply past the number range); the "
                       "file is damaged or the strength too large, and it would turn every image black")


class AdapterModule:
    """Factors of one adapted layer; `delta()` rebuilds scale·ΔW with LyCORIS's functional maths."""

    algo: ClassVar[str] = ""

    def __init__(self, name: str, factors: Mapping[str, torch.Tensor], alpha: float | None = None,
                 keys: Mapping[str, str] | None = None, *, alpha_key: str | None = None):
        self.name = name
        self.source = "the adapter"  # the file's label, set by load_adapter, for errors raised at patch time
        self.transform: str | None = None  # the host's change to the delta where it lands (Target.transform)
        self.factors = {k: v for k, v in factors.items() if k in ALGO_ROLES[self.algo]}
        self.alpha = None if alpha is None else float(alpha)
        self.keys = dict(keys or {})
        self.alpha_key = alpha_key or self._key("alpha")
        self._check_not_empty()
        self.shape = self._natural_shape()
        self.scale, self.alpha_ignored = self._scale()
        self._check_scale()

    # -- per algorithm -------------------------------------------------------------------------------------
    def _natural_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _scale(self) -> tuple[float, bool]:
        raise NotImplementedError

    def _delta(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def describe(self) -> dict:
        """Algorithm-specific parameters, for reports."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------------------------
    def _check_not_empty(self) -> None:
        for role, t in self.factors.items():
            if t.dim() == 0 or 0 in t.shape:
                raise FactorError(f"{self._key(role)} has shape {_fmt(t.shape) or 'scalar'}: a factor of rank 0 "
                                  "(or no values) is no adapter; the file is damaged")

    def _check_scale(self) -> None:
        if math.isfinite(self.scale) and abs(self.scale) <= MAX_SCALE:
            return
        raise FactorError(f"{self.name}: its scale alpha/rank is {self.scale:g} (alpha {self.alpha:g} from "
                          f"{self.alpha_key}, rank {self.rank}); expected a finite scale within ±{MAX_SCALE:g} "
                          "(trainers write about 0.01 to 16), so the alpha is damaged or crafted")

    def _need(self, *roles: str) -> None:
        missing = [r for r in roles if r not in self.factors]
        if missing:
            have = ", ".join(sorted(self.factors)) or "nothing"
            raise FactorError(f"{self.name}: {self.algo} module is missing {', '.join(missing)} (the file has {have})")

    def _key(self, role: str) -> str:
        return self.keys.get(role, f"{self.name}.{role}")

    def _inner(self, a: str, b: str, dim_a: int, dim_b: int) -> None:
        """Factor a's dim_a must equal factor b's dim_b (the rank they share)."""
        sa, sb = self.factors[a].shape, self.factors[b].shape
        if len(sa) <= dim_a or len(sb) <= dim_b or sa[dim_a] != sb[dim_b]:
            raise FactorError(f"{self._key(a)} has shape {_fmt(sa)} and {self._key(b)} has shape {_fmt(sb)}: "
                              "their ranks do not agree")

    def delta(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
        """scale · ΔW as a tensor of `shape`, computed in `dtype` on `device`, as the layer takes it (after the
        host's transform of the delta, e.g. scale and shift halves swapped)."""
        shape = tuple(int(s) for s in shape)
        if not fits(self.shape, shape):
            raise ValueError(f"{self.name}: the delta has shape {_fmt(self.shape)}, which does not fit {_fmt(shape)}")
        f = {k: v.to(device=device, dtype=dtype) for k, v in self.factors.items()}
        with torch.no_grad():
            out = transform_delta(self._delta(f).reshape(shape), self.transform)
        check_finite_delta(out, self.source, self.name, dtype)
        return out

    @property
    def rank(self) -> int | None:
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {_fmt(self.shape)} scale={self.scale:g}>"


class LoRAModule(AdapterModule):
    """ΔW = up @ down (with LoCon's tucker mid for conv kernels); scale alpha/rank."""

    algo = "lora"

    def __init__(self, name, factors, alpha=None, keys=None, *, alpha_source: str = "tensor", rslora: bool = False,
                 alpha_key: str | None = None):
        self.alpha_source = alpha_source if alpha is not None else None
        self.rslora = rslora
        super().__init__(name, factors, alpha, keys, alpha_key=alpha_key)

    def _natural_shape(self):
        self._need("lora_up", "lora_down")
        up, down = self.factors["lora_up"], self.factors["lora_down"]
        if "lora_mid" in self.factors:
            mid = self.factors["lora_mid"]
            self._inner("lora_up", "lora_mid", 1, 0)
            self._inner("lora_mid", "lora_down", 1, 0)
            return (up.shape[0], down.shape[1], *mid.shape[2:])
        self._inner("lora_up", "lora_down", 1, 0)
        return (up.shape[0], down.shape[1], *down.shape[2:])

    @property
    def rank(self) -> int:
        return int(self.factors["lora_down"].shape[0])

    def _scale(self):
        if self.alpha is None:
            return 1.0, False
        return self.alpha / (math.sqrt(self.rank) if self.rslora else self.rank), False

    def _delta(self, f):
        return ly_locon.diff_weight(f["lora_down"], f["lora_up"], f.get("lora_mid"), gamma=self.scale,
                                    backend=BACKEND)

    def describe(self):
        return {"algo": "lora", "rank": self.rank, "alpha": self.alpha, "alpha_source": self.alpha_source,
                "scale": self.scale, "tucker": "lora_mid" in self.factors, "rslora": self.rslora}


class LoHaModule(AdapterModule):
    """ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) (tucker-chained with t1/t2); scale alpha/rank."""

    algo = "loha"

    def _natural_shape(self):
        self._need("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        f = self.factors
        tucker = "hada_t1" in f or "hada_t2" in f
        if tucker:
            self._need("hada_t1", "hada_t2")
            halves = []
            for i in ("1", "2"):
                t, a, b = f[f"hada_t{i}"], f[f"hada_w{i}_a"], f[f"hada_w{i}_b"]
                self._inner(f"hada_t{i}", f"hada_w{i}_a", 0, 0)
                self._inner(f"hada_t{i}", f"hada_w{i}_b", 1, 0)
                halves.append((a.shape[1], b.shape[1], *t.shape[2:]))
        else:
            halves = []
            for i in ("1", "2"):
                a, b = f[f"hada_w{i}_a"], f[f"hada_w{i}_b"]
                self._inner(f"hada_w{i}_a", f"hada_w{i}_b", 1, 0)
                halves.append((a.shape[0], b.shape[1], *b.shape[2:]))
        if halves[0] != halves[1]:
            raise FactorError(f"{self.name}: LoHa halves disagree: w1 gives {_fmt(halves[0])}, "
                              f"w2 gives {_fmt(halves[1])}")
        return tuple(int(s) for s in halves[0])

    @property
    def rank(self) -> int:
        return int(self.factors["hada_w1_b"].shape[0])

    def _scale(self):
        return (1.0 if self.alpha is None else self.alpha / self.rank), False

    def _delta(self, f):
        return ly_loha.diff_weight(f["hada_w1_b"], f["hada_w1_a"], f["hada_w2_b"], f["hada_w2_a"],
                                   f.get("hada_t1"), f.get("hada_t2"), gamma=self.scale, backend=BACKEND)

    def describe(self):
        return {"algo": "loha", "rank": self.rank, "alpha": self.alpha, "scale": self.scale,
                "tucker": "hada_t1" in self.factors}


class LoKrModule(AdapterModule):
    """ΔW = w1 ⊗ w2, each half a full matrix or a low-rank pair (w2 optionally tucker); see module doc for scale."""

    algo = "lokr"

    def _natural_shape(self):
        f = self.factors
        for full, pair in (("lokr_w1", ("lokr_w1_a", "lokr_w1_b")), ("lokr_w2", ("lokr_w2_a", "lokr_w2_b", "lokr_t2"))):
            extra = [r for r in pair if r in f]
            if full in f and extra:
                raise FactorError(f"{self._key(extra[0])} sits beside {self._key(full)}: a LoKr half is either a "
                                  "full matrix or a low-rank pair, never both, so which one the trainer meant is "
                                  "unknown; the file is damaged")
        if "lokr_w1" in f:
            w1 = tuple(f["lokr_w1"].shape)
        else:
            self._need("lokr_w1_a", "lokr_w1_b")
            self._inner("lokr_w1_a", "lokr_w1_b", 1, 0)
            w1 = (f["lokr_w1_a"].shape[0], f["lokr_w1_b"].shape[1])
        if len(w1) != 2:
            raise FactorError(f"{self._key('lokr_w1')}: the first Kronecker factor must be a matrix, got {_fmt(w1)}")
        if "lokr_w2" in f:
            w2 = tuple(f["lokr_w2"].shape)
        elif "lokr_t2" in f:
            self._need("lokr_w2_a", "lokr_w2_b")
            self._inner("lokr_t2", "lokr_w2_a", 0, 0)
            self._inner("lokr_t2", "lokr_w2_b", 1, 0)
            w2 = (f["lokr_w2_a"].shape[1], f["lokr_w2_b"].shape[1], *f["lokr_t2"].shape[2:])
        else:
            self._need("lokr_w2_a", "lokr_w2_b")
            self._inner("lokr_w2_a", "lokr_w2_b", 1, 0)
            w2 = (f["lokr_w2_a"].shape[0], f["lokr_w2_b"].shape[1], *f["lokr_w2_b"].shape[2:])
        if len(w2) < 2:
            raise FactorError(f"{self._key('lokr_w2')}: the second Kronecker factor must be a matrix, got {_fmt(w2)}")
        self.w1_shape, self.w2_shape = tuple(int(s) for s in w1), tuple(int(s) for s in w2)
        return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])

    @property
    def decomposed(self) -> bool:
        return "lokr_w1" not in self.factors or "lokr_w2" not in self.factors

    @property
    def rank(self) -> int | None:
        """The rank alpha is divided by (ComfyUI's choice: w2's when w2 is split, else w1's)."""
        if "lokr_w2" not in self.factors:
            return int(self.factors["lokr_w2_b"].shape[0])
        if "lokr_w1" not in self.factors:
            return int(self.factors["lokr_w1_b"].shape[0])
        return None

    def _scale(self):
        if not self.decomposed:
            return 1.0, self.alpha is not None
        if self.alpha is None:
            return 1.0, False
        return self.alpha / self.rank, False

    def _delta(self, f):
        return ly_lokr.kron_weight(f.get("lokr_w1"), f.get("lokr_w1_a"), f.get("lokr_w1_b"), f.get("lokr_w2"),
                                   f.get("lokr_w2_a"), f.get("lokr_w2_b"), f.get("lokr_t2"), scale=self.scale,
                                   backend=BACKEND)

    def describe(self):
        f = self.factors
        w1_rank = None if "lokr_w1" in f else int(f["lokr_w1_b"].shape[0])
        w2_rank = None if "lokr_w2" in f else int(f["lokr_w2_b"].shape[0])
        return {"algo": "lokr", "factor": self.w1_shape, "w2": self.w2_shape, "w1_rank": w1_rank,
                "w2_rank": w2_rank, "full_rank": w2_rank is None, "tucker": "lokr_t2" in f, "alpha": self.alpha,
                "scale": self.scale, "alpha_ignored": self.alpha_ignored}


MODULE_TYPES: dict[str, type[AdapterModule]] = {"lora": LoRAModule, "loha": LoHaModule, "lokr": LoKrModule}


def algorithm_of(roles) -> str | None:
    """The algorithm a set of factor roles belongs to; FactorError when they mix algorithms."""
    found = [algo for algo, known in ALGO_ROLES.items() if known & set(roles)]
    if len(found) > 1:
        raise FactorError(f"mixes {' and '.join(found)} factors in one module ({', '.join(sorted(roles))})")
    return found[0] if found else None
