"""All ops, declared one family per module. Importing this package registers every op in `OPS`, and every op is
also an attribute here: `ops.conv2d`, `ops.relu`."""

from .registry import (NO_RULE_YET, NOT_DIFFERENTIABLE, OPS, Attr, FusionKind, OpDef, defop, get_op,  # noqa: F401
                       missing_facts)
from . import (activation, attention, backward, elementwise, layout, nn, norm, reduce, shape,  # noqa: F401,E402
               train_layout, training)  # (registration)
from . import rnn, winograd  # noqa: F401,E402  (registration: the LSTM recurrence, the Winograd conv)

globals().update(OPS)
