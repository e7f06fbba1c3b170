"""An item's input drawn the way a person reads it: an image-shaped tensor as an image (the
8x8 digit), anything else as a table of its values. Pure, and careful with what it is given:
the input came from the network, so a shape that does not match its data, a value that is not a
number or a tensor too large to draw is said in words, never drawn wrong."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mesh.console.markup import Html, escape

#: the largest side drawn as an image, and the most values shown in a table.
MAX_SIDE = 96
MAX_CELLS = 256
CELL = 24
TIMES = "\u00d7"


def image_shape(shape: Sequence[int]) -> tuple[int, int] | None:
    """(height, width) when a tensor reads as a grey image: 2-D, 3-D with one channel, or a
    flat vector whose length is a square of at least 4x4 (a flattened image, as the digits'
    64 features are)."""
    dims = [d for d in shape if d != 1] or list(shape[-1:])
    if len(dims) == 2 and all(4 <= d <= MAX_SIDE for d in dims):
        return dims[0], dims[1]
    if len(dims) == 1:
        side = math.isqrt(dims[0])
        if side * side == dims[0] and 4 <= side <= MAX_SIDE:
            return side, side
    return None


def draw_input(inputs: Mapping[str, Any] | None, withheld: str | None) -> Html:
    if inputs is None:
        why = (
            f"The input stayed where it was asked ({withheld}); only its metadata reached the hub."
            if withheld
            else "The input is no longer in the queue."
        )
        return Html(f'<p class="withheld">{escape(why)}</p>')
    parts = [_tensor(name, value) for name, value in sorted(inputs.items())]
    return Html("".join(parts))


def _tensor(name: str, value: Any) -> Html:
    if not isinstance(value, dict):
        return Html(f"<p>Input {escape(name)} cannot be read.</p>")
    shape = value.get("shape")
    data = value.get("data")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(data, list)
        or math.prod(shape) != len(data)
    ):
        return Html(f"<p>Input {escape(name)} has a shape that does not match its values.</p>")
    numbers = [float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None
               for x in data]  # fmt: skip
    dims = image_shape(shape)
    if dims is not None and all(x is not None and math.isfinite(x) for x in numbers):
        return _image(name, shape, dims, [x for x in numbers if x is not None])
    return _table(name, shape, numbers)


def _image(name: str, shape: list[int], dims: tuple[int, int], values: list[float]) -> Html:
    h, w = dims
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    cell = max(4, min(CELL, 320 // max(h, w)))
    rects = []
    for i, v in enumerate(values):
        # dark ink on a light ground, as a digit is written
        level = round(255 * (1 - (v - low) / span))
        rects.append(
            f'<rect x="{(i % w) * cell}" y="{(i // w) * cell}" width="{cell}" height="{cell}" '
            f'fill="rgb({level},{level},{level})"/>'
        )
    label = f"Input {name} drawn as a {h}\u00d7{w} image (values {low:g} to {high:g}, dark is high)"
    return Html(
        f'<figure class="input-image"><svg viewBox="0 0 {w * cell} {h * cell}" '
        f'width="{w * cell}" height="{h * cell}" role="img" aria-label="{escape(label)}">'
        + "".join(rects)
        + f"</svg><figcaption>{escape(name)}: {escape(_dims(shape))} "
        f"{escape(f'values {low:g} to {high:g}')}</figcaption></figure>"
    )


def _table(name: str, shape: list[int], values: list[float | None]) -> Html:
    width = shape[-1] if len(shape) >= 2 and 0 < shape[-1] <= 32 else min(len(values), 16) or 1
    shown = values[:MAX_CELLS]
    rows = []
    for r in range(0, len(shown), width):
        cells = "".join(f"<td>{escape(_value(v))}</td>" for v in shown[r : r + width])
        rows.append(f'<tr><th scope="row">{r // width}</th>{cells}</tr>')
    head = "".join(f'<th scope="col">{c}</th>' for c in range(min(width, len(shown))))
    more = (
        f"<p>{len(values) - MAX_CELLS} more values not shown.</p>"
        if len(values) > MAX_CELLS
        else ""
    )
    return Html(
        f'<table class="input-table"><caption>{escape(name)}: '
        f"{escape(_dims(shape))}</caption>"
        f'<thead><tr><th scope="col">row</th>{head}</tr></thead><tbody>'
        + "".join(rows)
        + f"</tbody></table>{more}"
    )


def _dims(shape: list[int]) -> str:
    return TIMES.join(map(str, shape))


def _value(v: float | None) -> str:
    if v is None:
        return "not a number"
    return f"{v:.4g}"


__all__ = ["draw_input", "image_shape"]
