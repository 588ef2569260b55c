"""The page's choices that its Run click sends (model, transform, view, projection, slice step).

trame holds a state change back while its connection is busy and sends a click at once, so a choice
made just before Run could miss the run; the click therefore carries them. A client can send
anything: each is checked against the list the page offers.
"""

from __future__ import annotations

from SAMFusionLib.errors import SamFusionError

# State names, in the order the Run click sends them; each is offered by the list "<name>s".
RUN_CHOICES = ("sf_model", "sf_transform", "sf_view", "sf_projection", "sf_slice_step")


def run_choices(choices: tuple, offered: dict[str, list]) -> dict:
    """{state name: value} for the sent ``choices`` (the first len(choices) of RUN_CHOICES), each
    one of ``offered[name]``; a one-line SamFusionError otherwise."""
    if len(choices) > len(RUN_CHOICES):
        raise SamFusionError(f"Run takes at most {len(RUN_CHOICES)} choices, got {len(choices)}")
    chosen = {}
    for name, value in zip(RUN_CHOICES, choices):
        if not any(value == item for item in offered[name]):
            raise SamFusionError(f"{name.removeprefix('sf_').replace('_', ' ')} {value!r} is not one of {', '.join(map(str, offered[name]))}")
        chosen[name] = value
    return chosen
