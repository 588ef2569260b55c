"""The one exception type that callers (CLI, Slicer Logic) turn into a one-line message."""


class SamFusionError(ValueError):
    """Bad input or an unusable resource. The message is a single line meant for the user."""


class Cancelled(SamFusionError):
    """The user cancelled a running job (polled between slices, batches and optimiser iterations)."""
