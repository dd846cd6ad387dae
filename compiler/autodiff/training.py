"""The training graph: forward in train mode, loss, backward and optimizer update, as one IR graph.

    inputs   the model's inputs, `labels`, host-fed scalars (learning rate, Adam's bias corrections), one uniform
             sample per dropout, then the persistent state: trainable parameters, optimizer moments, batch-norm
             running statistics
    outputs  `loss` (1,), `logits`, then the state's new values, named "<state>:new"

The runtime keeps the state in buffers of its own and binds each "<state>:new" output to the buffer of "<state>":
the update kernels write in place and nothing is copied per step (compiler/backend/plan.py). Parameters are
graph inputs, not params, so that no pass treats them as constants.

Train mode: batch_norm uses the batch's statistics (biased variance to normalize, unbiased for the running
variance, as PyTorch does) and updates the running statistics with `bn_momentum`; synchronized (`sync_world`, the
number of data-parallel processes), the statistics are combined over the processes by a collective
(ops/collective.py) as PyTorch's SyncBatchNorm does, so they are the whole batch's; dropout multiplies by a mask
drawn from a uniform input the runtime samples each step. The eval graph is the forward in inference mode over
the same state, as inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType, Value

from .reverse import AutodiffError, Emitter, backward

LOSSES = ("cross_entropy", "mse", "l1", "bce_with_logits")
OPTIMIZERS = ("sgd", "adam", "adamw")
NEW = ":new"  # suffix of the output that carries a state's next value


@dataclass(frozen=True)
class LossSpec:
    name: str = "cross_entropy"
    reduction: str = "mean"  # or "sum"
    label_smoothing: float = 0.0
    ignore_index: int = -100

    def __post_init__(self):
        if self.name not in LOSSES:
            raise AutodiffError(f"unknown loss {self.name!r}; supported: {', '.join(LOSSES)}")
        if self.reduction not in ("mean", "sum"):
            raise AutodiffError(f"loss reduction must be 'mean' or 'sum', got {self.reduction!r}")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_norm: float | None = None  # clip gradients to this global L2 norm

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise AutodiffError(f"unknown optimizer {self.name!r}; supported: {', '.join(OPTIMIZERS)}")
        if self.nesterov and self.momentum <= 0:
            raise AutodiffError("Nesterov momentum needs momentum > 0")

    @property
    def scalars(self) -> tuple[str, ...]:
        """The host-computed scalars the update kernels read each step (see runtime/training.py)."""
        if self.name == "sgd":
            return ("lr",)
        return ("step_size", "inv_sqrt_bc2") + (("decay",) if self.name == "adamw" else ())


@dataclass
class StateSpec:
    name: str
    kind: str  # "param", "running_mean", "running_var", "momentum", "exp_avg", "exp_avg_sq"
    initial: np.ndarray
    updated: bool = True


@dataclass
class TrainingProgram:
    graph: Graph
    eval_graph: Graph
    state: list[StateSpec]
    inputs: list[str]  # the model's inputs (fed by the user)
    labels: str
    scalars: dict[str, str]  # scalar kind -> input name
    dropout: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # (input name, shape)
    saved_activation_bytes: int = 0  # forward results the backward reads (kept alive from forward to backward)

    @property
    def state_bindings(self) -> dict[str, str]:
        """Output name of each updated state -> the state's input name."""
        return {s.name + NEW: s.name for s in self.state if s.updated}


def _bn_stats(fwd: Graph) -> set[Value]:
    return {v for n in fwd.nodes if n.op is ops.batch_norm for v in n.inputs[3:5] if v.is_param}


def build_training_program(fwd: Graph, trainable: set[str], loss: LossSpec, opt: OptimizerSpec | None,
                           bn_momentum: float = 0.1, sync_world: int | None = None) -> TrainingProgram:
    """`fwd`: a verified forward graph whose first output is the prediction (logits); `trainable`: names of
    the params to train (the others stay constants, batch-norm running statistics become state); `sync_world`:
    batch norm's statistics averaged over that many data-parallel processes (None: each process's own).
    With `opt` None the graph stops at the gradients: outputs loss, logits, then "<param>:grad" for each
    trainable param, then the running statistics' new values (for tests and tools)."""
    unknown = sorted(trainable - {p.name for p in fwd.params})
    if unknown:
        raise AutodiffError(f"no parameter(s) {unknown} in the model")
    stats = _bn_stats(fwd)
    state: list[StateSpec] = []
    for p in fwd.params:
        if p.name in trainable:
            if not p.type.dtype.startswith("float"):
                raise AutodiffError(f"parameter {p.name!r} is {p.type}: only float parameters can be trained")
            state.append(StateSpec(p.name, "param", p.data))
        elif p in stats:
            kind = "running_mean" if any(n.inputs[3] is p for n in fwd.nodes if n.op is ops.batch_norm) \
                else "running_var"
            state.append(StateSpec(p.name, kind, p.data))
    if not any(s.kind == "param" for s in state):
        raise AutodiffError("the model has no trainable parameters")
    names = {s.name for s in state}

    train = Graph(fwd.name + "_train")
    env: dict[Value, Value] = {}
    for v in fwd.inputs:
        env[v] = train.add_input(v.name, v.type)
    logits_type = fwd.outputs[0].type
    label_type = TensorType(logits_type.shape[:1], "int64") if loss.name == "cross_entropy" else logits_type
    labels = train.add_input("labels", label_type)
    scalar_dtype = logits_type.dtype
    scalars = {k: train.add_input(k, TensorType((1,), scalar_dtype)) for k in (opt.scalars if opt else ())}
    for p in fwd.params:
        env[p] = train.add_input(p.name, p.type) if p.name in names else train.add_param(p.name, p.data)
    dropout: list[tuple[str, tuple[int, ...]]] = []
    new_state: dict[str, Value] = {}
    e = Emitter(train)
    for n in fwd.nodes:
        ins = [env[v] for v in n.inputs]
        e.name = n.name
        if n.op is ops.batch_norm:
            y, updates = _batch_norm_train(e, n, ins, bn_momentum, sync_world)
            for v, new in zip(n.inputs[3:5], updates):
                if v.name in names:
                    new_state[v.name] = new
            env[n.outputs[0]] = y
        elif n.op is ops.dropout and n.attrs["p"] > 0:
            u = train.add_input(f"{n.outputs[0].name}.u", TensorType(n.inputs[0].type.shape, "float32"))
            dropout.append((u.name, u.type.shape))
            env[n.outputs[0]] = e.op(ops.dropout_train, [ins[0], u], p=n.attrs["p"])
        elif n.op is ops.lstm_sequence:  # keep every step's gate pre-activations for the backward
            outs = train.add_node(n.op, ins, {**n.attrs, "save_gates": True}, name=n.name,
                                  out_names=[o.name for o in n.outputs])
            env.update(zip(n.outputs, outs))
        else:
            outs = train.add_node(n.op, ins, n.attrs, name=n.name, out_names=[o.name for o in n.outputs])
            env.update(zip(n.outputs, outs))
    logits = env[fwd.outputs[0]]
    loss_value = _loss(e, loss, logits, labels)
    params = [env[p] for p in fwd.params if p.name in trainable]
    n_forward = len(train.nodes)
    grads = backward(train, loss_value, params)
    grads = [grads[p] for p in params]
    forward_nodes = set(train.nodes[:n_forward])
    saved = {v for n in train.nodes[n_forward:] for v in n.inputs if v.producer in forward_nodes}
    saved_bytes = sum(v.type.nbytes for v in saved)
    if opt is None:
        stats = [s for s in state if s.name in new_state]
        train.outputs = [loss_value, logits] + grads + [new_state[s.name] for s in stats]
        train.output_names = ["loss", "logits"] + [p.name + ":grad" for p in params] + [s.name + NEW for s in stats]
        train.remove_unused()
        train.verify()
        return TrainingProgram(train, eval_graph(fwd, names), state, [v.name for v in fwd.inputs], labels.name,
                               {}, dropout, saved_bytes)
    if opt.clip_norm is not None:
        grads = _clip_by_global_norm(e, grads, opt.clip_norm)
    for p, g in zip(params, grads):
        new_state.update(_update(e, opt, p, g, scalars, state))
    for s in state:
        s.updated = s.name in new_state
    outputs = [loss_value, logits] + [new_state[s.name] for s in state if s.updated]
    train.outputs = outputs
    train.output_names = ["loss", "logits"] + [s.name + NEW for s in state if s.updated]
    train.remove_unused()
    train.verify()
    return TrainingProgram(train, eval_graph(fwd, names), state, [v.name for v in fwd.inputs], labels.name,
                           {k: v.name for k, v in scalars.items()}, dropout, saved_bytes)


def eval_graph(fwd: Graph, state_names: set[str]) -> Graph:
    """The forward graph in inference mode with the state (params, running statistics) as inputs."""
    g = Graph(fwd.name + "_eval")
    env: dict[Value, Value] = {v: g.add_input(v.name, v.type) for v in fwd.inputs}
    for p in fwd.params:
        env[p] = g.add_input(p.name, p.type) if p.name in state_names else g.add_param(p.name, p.data)
    for n in fwd.nodes:
        outs = g.add_node(n.op, [env[v] for v in n.inputs], n.attrs, name=n.name,
                          out_names=[o.name for o in n.outputs])
        env.update(zip(n.outputs, outs))
    g.outputs = [env[v] for v in fwd.outputs]
    g.output_names = list(fwd.output_names)
    g.remove_unused()
    return g


# -- train-mode pieces ------------------------------------------------------------------------------------------------
def _batch_norm_train(e: Emitter, n, ins, momentum: float, sync_world: int | None = None):
    """Synchronized (`sync_world` processes, equal batches): one collective forward and one backward per batch
    norm, as PyTorch's SyncBatchNorm. Each process's mean m and variance v (two passes over its x) are combined
    exactly: mean = E[m], var = E[v] + E[m^2] - E[m]^2, averaged and combined in float64, where the cancellation in
    E[m^2] - E[m]^2 (the variance of the processes' means, small next to mean^2) loses nothing that float32 kept;
    the error of m's own rounding enters multiplied by m - mean."""
    x, scale, bias, rm, rv = ins
    c = x.type.shape[1]
    bshape = (1, c) + (1,) * (x.type.rank - 2)
    axes = (0,) + tuple(range(2, x.type.rank))
    count = x.type.numel // c
    mean = e.op(ops.reduce_mean, [x], axes=axes, keepdims=True)
    xc = e.op(ops.sub, [x, mean])
    var = e.op(ops.reduce_mean, [e.mul(xc, xc)], axes=axes, keepdims=True)
    if sync_world:
        count *= sync_world
        m, v = (e.op(ops.cast, [t], to="float64") for t in (mean, var))
        moments = e.op(ops.all_reduce_mean, [e.op(ops.concat, [m, v, e.mul(m, m)], axis=0)])
        m, v, q = (e.op(ops.strided_slice, [moments], begins=(i,) + (0,) * (len(bshape) - 1),
                        ends=(i + 1,) + bshape[1:], strides=(1,) * len(bshape)) for i in range(3))
        mean = e.op(ops.cast, [m], to=x.type.dtype)
        var = e.op(ops.cast, [e.op(ops.sub, [e.op(ops.add, [v, q]), e.mul(m, m)])], to=x.type.dtype)
        xc = e.op(ops.sub, [x, mean])
    rstd = e.op(ops.reciprocal, [e.op(ops.sqrt, [e.op(ops.add, [var, n.attrs["epsilon"]])])])
    y = e.op(ops.add, [e.mul(e.mul(xc, rstd), e.op(ops.reshape, [scale], shape=bshape)),
                       e.op(ops.reshape, [bias], shape=bshape)])
    mean_c = e.op(ops.reshape, [mean], shape=(c,))
    var_c = e.op(ops.reshape, [var], shape=(c,))
    new_rm = e.op(ops.add, [e.scale(rm, 1 - momentum), e.scale(mean_c, momentum)])
    new_rv = e.op(ops.add, [e.scale(rv, 1 - momentum), e.scale(var_c, momentum * count / max(count - 1, 1))])
    return y, (new_rm, new_rv)


def _reduce_all(e: Emitter, v: Value, reduction: str) -> Value:
    op = ops.reduce_mean if reduction == "mean" else ops.reduce_sum
    r = e.op(op, [v], axes=tuple(range(v.type.rank)), keepdims=True)
    return e.op(ops.reshape, [r], shape=(1,)) if r.type.shape != (1,) else r


def _loss(e: Emitter, spec: LossSpec, logits: Value, labels: Value) -> Value:
    e.name = "loss"
    if spec.name == "cross_entropy":
        if logits.type.rank != 2:
            raise AutodiffError(f"cross_entropy expects logits (N, C), the model gives {logits.type}")
        per = e.op(ops.softmax_cross_entropy, [logits, labels], label_smoothing=spec.label_smoothing,
                   ignore_index=spec.ignore_index)
        total = e.op(ops.reduce_sum, [per], axes=(0,), keepdims=True)
        if spec.reduction == "sum":
            return total
        ignored = e.op(ops.cast, [e.op(ops.equal, [labels, e.const(spec.ignore_index, labels.type.dtype)])],
                       to=logits.type.dtype)
        count = e.op(ops.reduce_sum, [e.op(ops.sub, [1.0, ignored])], axes=(0,), keepdims=True)
        return e.op(ops.div, [total, count])
    d = e.op(ops.sub, [logits, labels])
    if spec.name == "mse":
        return _reduce_all(e, e.mul(d, d), spec.reduction)
    if spec.name == "l1":
        return _reduce_all(e, e.op(ops.abs, [d]), spec.reduction)
    # bce_with_logits: max(x, 0) - x * y + log(1 + exp(-|x|)), stable for any x
    x = logits
    soft = e.op(ops.log, [e.op(ops.add, [1.0, e.op(ops.exp, [e.op(ops.neg, [e.op(ops.abs, [x])])])])])
    per = e.op(ops.add, [e.op(ops.sub, [e.op(ops.relu, [x]), e.mul(x, labels)]), soft])
    return _reduce_all(e, per, spec.reduction)


def _clip_by_global_norm(e: Emitter, grads: list[Value], max_norm: float) -> list[Value]:
    """torch.nn.utils.clip_grad_norm_: scale every gradient by min(1, max_norm / (global norm + 1e-6))."""
    e.name = "clip"
    total = None
    for g in grads:
        sq = _reduce_all(e, e.mul(g, g), "sum")
        total = sq if total is None else e.add(total, sq)
    norm = e.op(ops.sqrt, [total])
    coef = e.op(ops.minimum, [e.op(ops.div, [max_norm, e.op(ops.add, [norm, 1e-6])]), 1.0])
    return [e.mul(g, coef) for g in grads]


def _update(e: Emitter, opt: OptimizerSpec, p: Value, g: Value, scalars: dict[str, Value],
            state: list[StateSpec]) -> dict[str, Value]:
    """The update of one parameter as an elementwise chain (the fuser makes it one kernel or a few); its moments
    become state inputs (zeros at first, as PyTorch's). Returns {state name: its new value}."""
    e.name = p.name + ".update"
    out: dict[str, Value] = {}

    def moment(kind):
        v = e.g.add_input(f"{p.name}.{kind}", p.type)
        state.append(StateSpec(v.name, kind, np.zeros(p.type.shape, p.type.dtype)))
        return v

    if opt.name == "sgd":
        if opt.weight_decay:
            g = e.add(g, e.scale(p, opt.weight_decay))
        if opt.momentum:
            buf = moment("momentum")
            new_buf = e.add(e.scale(buf, opt.momentum), g)
            out[buf.name] = new_buf
            g = e.add(g, e.scale(new_buf, opt.momentum)) if opt.nesterov else new_buf
        out[p.name] = e.op(ops.sub, [p, e.mul(g, scalars["lr"])])
        return out
    b1, b2 = opt.betas
    if opt.name == "adam" and opt.weight_decay:
        g = e.add(g, e.scale(p, opt.weight_decay))
    m, v = moment("exp_avg"), moment("exp_avg_sq")
    new_m = e.add(e.scale(m, b1), e.scale(g, 1 - b1))
    new_v = e.add(e.scale(v, b2), e.scale(e.mul(g, g), 1 - b2))
    out[m.name], out[v.name] = new_m, new_v
    decayed = e.mul(p, scalars["decay"]) if opt.name == "adamw" else p
    denom = e.op(ops.add, [e.mul(e.op(ops.sqrt, [new_v]), scalars["inv_sqrt_bc2"]), opt.eps])
    out[p.name] = e.op(ops.sub, [decayed, e.mul(e.op(ops.div, [new_m, denom]), scalars["step_size"])])
    return out


# -- data parallel -------------------------------------------------------------------------------------------------
GRADS = "grads"  # the data-parallel gradient plan's output and the update plan's input: every gradient, flat


@dataclass
class DataParallelProgram:
    """A training step cut in two for data-parallel training (runtime/training.py: the gradients averaged over
    the processes between the two): `grads` computes the loss and every trainable parameter's gradient, flattened
    into one buffer (output GRADS, parameters in the model's order), and the running statistics' next values (kept
    local, as PyTorch's DDP keeps them); `update` takes that buffer (averaged) and the optimizer's scalars and
    updates the parameters and moments in place. Its parameters are state in both (read by one, updated by the
    other: one buffer each when compiled with shared memory)."""
    grads: TrainingProgram
    update: Graph
    update_state: list[StateSpec]  # the parameters and the optimizer's moments
    scalars: dict[str, str]  # scalar kind -> input name of `update`

    @property
    def update_bindings(self) -> dict[str, str]:
        return {s.name + NEW: s.name for s in self.update_state if s.updated}


def build_data_parallel_program(fwd: Graph, trainable: set[str], loss: LossSpec, opt: OptimizerSpec,
                                bn_momentum: float = 0.1, sync_world: int | None = None) -> DataParallelProgram:
    """The step of `build_training_program` as the two graphs of a DataParallelProgram (`sync_world`: batch norm
    synchronized over that many processes)."""
    prog = build_training_program(fwd, trainable, loss, None, bn_momentum, sync_world)
    g = prog.graph
    params = [s for s in prog.state if s.kind == "param"]
    n = len(params)
    grads = g.outputs[2:2 + n]
    for s, gr in zip(params, grads):
        if gr.type.dtype != "float32":
            raise AutodiffError(f"data-parallel training averages float32 gradients; {s.name!r}'s is {gr.type}")
    e = Emitter(g, "grads")
    flat = [e.op(ops.reshape, [gr], shape=(gr.type.numel,)) for gr in grads]
    buffer = e.op(ops.concat, flat, axis=0) if len(flat) > 1 else flat[0]
    names = g.output_names[:2] + [GRADS] + g.output_names[2 + n:]
    g.outputs = g.outputs[:2] + [buffer] + g.outputs[2 + n:]
    g.output_names = names
    g.remove_unused()
    g.verify()
    stats = {s.name for s in prog.state if s.kind != "param"}
    for s in prog.state:
        s.updated = s.name in stats  # the parameters are read here, updated by the update graph

    u = Graph(fwd.name + "_update")
    flat_in = u.add_input(GRADS, buffer.type)
    scalars = {k: u.add_input(k, TensorType((1,), "float32")) for k in opt.scalars}
    state = [StateSpec(s.name, "param", s.initial) for s in params]
    e = Emitter(u, "update")
    values, pieces, at = [], [], 0
    for s in params:
        k = s.initial.size
        p = u.add_input(s.name, TensorType(s.initial.shape, s.initial.dtype.name))
        piece = e.op(ops.strided_slice, [flat_in], begins=(at,), ends=(at + k,), strides=(1,)) if n > 1 \
            else flat_in
        pieces.append(e.op(ops.reshape, [piece], shape=tuple(s.initial.shape)))
        values.append(p)
        at += k
    if opt.clip_norm is not None:
        pieces = _clip_by_global_norm(e, pieces, opt.clip_norm)
    new_state: dict[str, Value] = {}
    for p, gr in zip(values, pieces):
        new_state.update(_update(e, opt, p, gr, scalars, state))
    u.outputs = [new_state[s.name] for s in state]
    u.output_names = [s.name + NEW for s in state]
    u.remove_unused()
    u.verify()
    return DataParallelProgram(prog, u, state, {k: v.name for k, v in scalars.items()})
