"""winograd: run the 3x3 convs where Winograd F(4x4, 3x3) is faster as `winograd_conv2d`, chosen per conv.

It runs after `alter_layout` and rewrites blocked convs only: `conv2d_nchwc` on an NCHW[16]c input, 3x3, stride 1,
dilation 1 (groups 1 by construction), weight a param. Input and output stay NCHW[16]c, so the layout chain that
`alter_layout` built is kept as it is; the conv's weight is transformed at compile time (U = G g G^T, 4x the
weight's size for F(4, 3)) and the old weight is dropped. Convs left NCHW by `alter_layout` (the first conv on
the image, isolated convs, `--disable-pass alter_layout`) are not touched.

The rule (`WinogradPolicy.wants`) comes from timing both kernels, one thread, one conv + bias + ReLU on
NCHW[16]c, interleaved, least of 36 runs each (benchmarks/winograd.py; benchmarks/results/winograd.md has them all):

    conv (IC->OC, output HxW)   direct ms  Winograd ms  ratio      conv                      direct  Winograd  ratio
    64->64     56x56  ResNet       2.03      0.71       0.35       16->16   56x56              0.132    0.094    0.72
    128->128   28x28  ResNet       2.01      0.67       0.33       16->32   28x28              0.065    0.037    0.57
    256->256   14x14  ResNet       2.00      0.75       0.38       32->32   14x14              0.033    0.021    0.63
    512->512    7x7   ResNet       2.07      1.08       0.52       64->64    7x7               0.033    0.015    0.45
    64->64   224x224  VGG         92.0      53.2        0.58       256->256  4x4 (one tile)    0.164    0.181    1.10
    128->128 112x112  VGG         59.0      35.9        0.61       512->512  4x4 (one tile)    0.666    1.190    1.79
    256->256   56x56  VGG         84.5      15.5        0.18
    512->512   28x28  VGG         82.9      18.9        0.23
(the VGG-size convs ran while other jobs loaded the machine, the direct ones at 40-63 GFLOP/s instead of ~113:
read those ratios as +-30 %; an earlier run gave 0.78, 0.42, 0.31, 0.26). Winograd won
on every shape with at least 2 x 2 output tiles, from 16 channels (the least a blocked conv has) to 512; its
gain is smallest where the transformed weight (36 * IC * OC floats: 37.7 MB at 512 x 512) must stream from memory
for few tiles (7x7) and where V and M outgrow the caches (224x224: 29 MB each). With a single 4x4 output tile
the GEMM's 4-tile register rows are 3/4 padding and Winograd loses. So: every eligible conv with at least 16
input and output channels and at least `min_tiles` = 4 output tiles of 4x4.

Compile time: a Winograd kernel builds in ~0.3 s (its transforms are two 1-D passes each, see
ops/winograd.py); ResNet-50 compiles in ~4 s with its 13 Winograd convs (2.5 s without the pass; 14-31 s
with the first, one-pass transforms, whose common-subexpression elimination took 5 s a kernel).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, Node, Value
from tensorforge.compiler.ops.nchwc import _nchwc_weight
from tensorforge.compiler.ops.packed import unpack_conv2d_weight
from tensorforge.compiler.ops.winograd import BLOCK, transform_weight


@dataclass(frozen=True)
class WinogradPolicy:
    """Which convs run as Winograd F(tile, 3); see the measurements in the module docstring."""

    tile: int = 4
    min_in_channels: int = 16  # every blocked conv has 16 or more: Winograd won at 16 channels already
    min_out_channels: int = 16
    min_tiles: int = 4  # output tiles (N * ceil(OH/4) * ceil(OW/4)); the GEMM pads them to whole groups of 4

    def eligible(self, node: Node) -> bool:
        """Can the conv run as Winograd at all (shape, stride, layout, compile-time weight)?"""
        if node.op is not ops.conv2d_nchwc:
            return False
        a, w = node.attrs, node.inputs[1]
        return (a["in_block"] == BLOCK and a["block"] == BLOCK
                and tuple(w.type.shape[2:4]) == (3, 3) and a["strides"] == (1, 1) and a["dilations"] == (1, 1)
                and w.is_param and w.data is not None and node.inputs[0].type.dtype == "float32")

    def wants(self, node: Node) -> bool:
        if not self.eligible(node):
            return False
        n, icb, _, _, lanes = node.inputs[0].type.shape
        _, _, oh, ow, _ = node.outputs[0].type.shape
        tiles = n * -(-oh // self.tile) * -(-ow // self.tile)
        return (icb * lanes >= self.min_in_channels and node.attrs["out_channels"] >= self.min_out_channels
                and tiles >= self.min_tiles)


@dataclass(frozen=True)
class Winograd:
    policy: WinogradPolicy = field(default_factory=WinogradPolicy)
    name: str = "winograd"

    def __call__(self, g: Graph) -> Graph:
        winograd_graph(g, self.policy)
        return g


winograd = Winograd()


def winograd_graph(g: Graph, policy: WinogradPolicy = WinogradPolicy()) -> int:
    """Rewrite `g` in place; returns the number of convs now run as Winograd."""
    transformed: dict[Value, Value] = {}  # blocked conv weight -> its Winograd transform (shared by its readers)
    converted = 0
    for n in list(g.nodes):
        if not policy.wants(n):
            continue
        a = n.attrs
        w = n.inputs[1]
        if w not in transformed:
            oihw = unpack_conv2d_weight(_nchwc_weight(w.data, a["in_block"]), wlayout="packed", block=a["block"],
                                        out_channels=a["out_channels"])
            # made here, held by no one else: the model runs on it where it lies (Graph.owned)
            transformed[w] = g.add_param(w.name + ".winograd", transform_weight(oihw, policy.tile, aligned=True),
                                         owned=True)
        attrs = {"pads": a["pads"], "tile": policy.tile, "out_channels": a["out_channels"]}
        (y,) = g.add_node(ops.winograd_conv2d, [n.inputs[0], transformed[w]] + n.inputs[2:], attrs, name=n.name,
                          index=g.nodes.index(n))
        g.take_over(n, y)
        converted += 1
    g.remove_unused()
    return converted
