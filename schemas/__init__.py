"""tickbus message schemas: every message type, one tagged union, one codec."""

from .codec import Codec
from .messages import *  # noqa: F403
from .messages import BUILTIN_TYPES, NOTIONAL_SCALE, SCALE, AnyMsg, Levels, Msg

__all__ = ["Codec", "BUILTIN_TYPES", "NOTIONAL_SCALE", "SCALE", "AnyMsg", "Levels", "Msg"]
__all__ += [t.__name__ for t in BUILTIN_TYPES]
