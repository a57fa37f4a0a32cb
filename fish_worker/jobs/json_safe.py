"""Will this result chunk survive being posted as JSON? Checked before it leaves the job.

runpod serialises a handler's chunks after the handler has yielded them, where a failure (a
string that is not valid UTF-8, a NaN, a numpy scalar) loses the job without any result. Walking
the chunk is much cheaper than serialising it (a 30 s float list: ~50 ms against ~2 s).
"""

from __future__ import annotations

import math
from typing import Any

_SCALARS = (bool, int, type(None))


class NotJsonSafe(ValueError):
    pass


def check_json_safe(obj: Any) -> None:
    """Raise NotJsonSafe naming where `obj` cannot become strict, UTF-8 JSON."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise NotJsonSafe(f"{where or 'result'}: invalid unicode at position {exc.start}") from None
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise NotJsonSafe(f"{where or 'result'}: non-finite number {value}")
        elif isinstance(value, _SCALARS):
            continue
        elif isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise NotJsonSafe(f"{where or 'result'}: key of type {type(key).__name__}")
                stack.append((f"{where}.{key}" if where else key, item))
                stack.append((where or "result", key))
        elif isinstance(value, (list, tuple)):
            if _all_finite_floats(value):  # the common case: a float audio list
                continue
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
        else:
            raise NotJsonSafe(f"{where or 'result'}: value of type {type(value).__name__}")


def _all_finite_floats(values: list[Any] | tuple[Any, ...]) -> bool:
    if not values or type(values[0]) is not float:
        return False
    return set(map(type, values)) <= {float, int} and all(map(math.isfinite, values))
