"""Renamed keywords: the old spelling keeps working, with a DeprecationWarning naming the new one.

One name per concept across the API: `cfg` for the classifier-free guidance scale (as in
`SamplingSettings`, `FeedbackConfig` and `--cfg`), `negative_prompt` for one negative prompt
(`--negative-prompt`; `negative_prompts` where there is one per image), `width` / `height` for
an output size in pixels.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def renamed_keywords(**renamed: str) -> Callable[[F], F]:
    """Decorator accepting each old keyword `old="new"` as the new one, with a DeprecationWarning.

    Passing both spellings raises a TypeError naming both. Positional calls are unaffected.
    """

    def decorate(fn: F) -> F:
        name = fn.__qualname__.removesuffix(".__init__")

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renamed.items():
                if old not in kwargs:
                    continue
                if new in kwargs:
                    raise TypeError(f"{name}() got {old}= (the old name of {new}=) and {new}=")
                warnings.warn(
                    f"{name}({old}=...) is deprecated: pass {new}=... instead",
                    DeprecationWarning,
                    stacklevel=2,  # the caller's line
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
