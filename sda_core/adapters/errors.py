"""The one error every adapter problem becomes, so nodes can show it to the user as it is."""
from __future__ import annotations


class AdapterError(ValueError):
    """A file or adapter the pack refuses; the message names the file and what was wrong or expected."""


class AdapterFileMissing(AdapterError):
    """The named file is not in that folder (another models folder may still hold it)."""
