"""Where the test-only capture node leaves what a prompt produced, for the test that queued it."""
from typing import Any

CAPTURED: dict[str, Any] = {}


def take(key: str) -> Any:
    """Pop a captured value, failing loudly when the prompt never produced it."""
    if key not in CAPTURED:
        raise KeyError(f"nothing captured under {key!r}; captured: {sorted(CAPTURED)}")
    return CAPTURED.pop(key)
