"""Which seeds a grid renders: an explicit list wins over first-seed-plus-count."""
from __future__ import annotations

MAX_SEED = 0xFFFFFFFFFFFFFFFF


class SeedError(ValueError):
    """The seed widgets hold something that is not a usable list of seeds; the message names the widget."""


def resolve_seeds(seed: int, num_seeds: int, seed_list: str = "") -> list[int]:
    """'42,123,777' → [42, 123, 777] when seed_list is not empty, else seed, seed+1, … (num_seeds of them)."""
    text = (seed_list or "").strip()
    if text:
        seeds = []
        for position, item in enumerate(text.replace(";", ",").replace("\n", ",").split(","), start=1):
            item = item.strip()
            if not item:
                continue
            try:
                value = int(item)
            except ValueError:
                raise SeedError(f"seed_list: item {position} ({item!r}) is not a whole number; expected seeds "
                                f"separated by commas, e.g. '42,123,777,999'") from None
            if not 0 <= value <= MAX_SEED:
                raise SeedError(f"seed_list: seed {value} is outside 0…{MAX_SEED}")
            seeds.append(value)
    else:
        if num_seeds < 2:
            raise SeedError(f"num_seeds is {num_seeds}; diversity needs at least 2 seeds")
        seeds = [(seed + k) % (MAX_SEED + 1) for k in range(num_seeds)]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise SeedError(f"seed_list repeats seed(s) {repeated}: a repeated seed gives the same image twice and "
                        f"fakes low diversity")
    if len(seeds) < 2:
        raise SeedError(f"seed_list holds {len(seeds)} seed; diversity needs at least 2")
    return seeds
