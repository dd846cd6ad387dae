"""The verifier catches broken invariants and names the node."""

import numpy as np
import pytest

from tensorforge.compiler import ops
from tensorforge.compiler.ir import Graph, TensorType, verify
from tensorforge.compiler.ir.graph import Value
from tensorforge.runtime.errors import IRError, VerifyError


def chain() -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType((2, 3)))
    (a,) = g.add_node(ops.relu, [x])
    (b,) = g.add_node(ops.exp, [a])
    g.outputs = [b]
    return g


def test_valid_graph_passes():
    verify(chain())


def test_use_before_definition():
    g = chain()
    g.nodes.reverse()
    with pytest.raises(VerifyError, match=r"node 0 \(exp\) reads %0 before it is defined"):
        verify(g)


def test_dangling_value():
    g = chain()
    stray = Value("stray", TensorType((2, 3)))
    g.nodes[1].inputs = [stray]
    with pytest.raises(VerifyError, match="reads %stray before it is defined"):
        verify(g)


def test_output_type_must_follow_type_rule():
    g = chain()
    g.nodes[0].outputs[0].type = TensorType((3, 2))
    with pytest.raises(VerifyError, match=r"outputs are typed f32\[3,2\] but the type rule gives f32\[2,3\]"):
        verify(g)


def test_undefined_graph_output():
    g = chain()
    g.outputs = [Value("ghost", TensorType((1,)))]
    with pytest.raises(VerifyError, match="graph output %ghost is not defined"):
        verify(g)


def test_param_data_must_match_type():
    g = chain()
    p = g.add_param("p", np.zeros((2, 3), np.float32))
    p.data = np.zeros((3, 3), np.float32)
    with pytest.raises(VerifyError, match=r"param %p is typed f32\[2,3\] but holds float32\[3, 3\]"):
        verify(g)


def test_type_rule_errors_name_op_and_node():
    g = Graph()
    x = g.add_input("x", TensorType((1, 3, 8, 8)))
    w = g.add_param("w", np.zeros((4, 5, 3, 3), np.float32))
    with pytest.raises(IRError, match=r"op conv2d \(node 'myconv'\): input channels 3, weight f32\[4,5,3,3\]"):
        g.add_node(ops.conv2d, [x, w], {}, name="myconv")
    with pytest.raises(IRError, match="shapes .* do not broadcast"):
        g.add_node(ops.add, [x, g.add_input("y", TensorType((2, 3)))])
    with pytest.raises(IRError, match="missing required attribute 'perm'"):
        g.add_node(ops.transpose, [x])
    with pytest.raises(IRError, match="attribute groups: expected an int"):
        g.add_node(ops.conv2d, [x, w], {"groups": 1.5})
