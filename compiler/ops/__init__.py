"""All ops, declared one family per module. Importing this package registers every op in `OPS`, and every op is
also an attribute here: `ops.conv2d`, `ops.relu`."""

from .registry import NOT_DIFFERENTIABLE, OPS, Attr, FusionKind, OpDef, defop, get_op  # noqa: F401
from . import (activation, attention, elementwise, grad, layout, nn, reduce, shape,  # noqa: F401,E402  (registration)
               train_layout)
from . import rnn, winograd  # noqa: F401,E402  (registration: the LSTM recurrence, the Winograd conv)

globals().update(OPS)
