"""onnxinv.load.graphs: what a node reads, subgraph scopes included, checked against onnxruntime.

``reads`` replaced two versions (in repair and in partition) that resolved subgraph names
differently; the cases where they differed are here: a name an ``If``'s other branch defines
is not in scope, and a subgraph's own names are its own wherever their node stands.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import const, make_model, session, value_info
from onnx import TensorProto, helper

from onnxinv.load.graphs import reads
from onnxinv.load.read import read_model
from onnxinv.load.repair import is_sorted, topological_sort


def _if(then_nodes, else_nodes, then_inits=(), then_first=False, out="y") -> onnx.NodeProto:
    """An If on ``c``; its attributes are else_branch, then_branch (make_node sorts them)."""
    then_g = helper.make_graph(then_nodes, "then", [], [value_info("t", [2])], list(then_inits))
    else_g = helper.make_graph(else_nodes, "else", [], [value_info("e", [2])])
    node = helper.make_node("If", ["c"], [out], then_branch=then_g, else_branch=else_g)
    if then_first:
        node.attribute.reverse()
    return node


def _model(nodes, cond: bool) -> onnx.ModelProto:
    """Unchecked: some of these graphs are deliberately out of order."""
    graph = helper.make_graph(
        nodes, "g", [value_info("x", [2])], [value_info("y", [2])], [const("c", cond, np.bool_)]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_inputs_without_omitted_optionals():
    node = helper.make_node("Clip", ["x", "", "hi"], ["y"])
    assert reads(node) == ["x", "hi"]


def test_branches_read_outer_names():
    node = _if([helper.make_node("Neg", ["a"], ["t"])], [helper.make_node("Abs", ["a"], ["e"])])
    assert reads(node) == ["c", "a", "a"]


def test_a_subgraphs_own_names_are_not_read_from_outside():
    inner = [helper.make_node("Neg", ["x"], ["a"]), helper.make_node("Abs", ["a"], ["t"])]
    assert reads(_if(inner, [helper.make_node("Abs", ["x"], ["e"])])) == ["c", "x", "x"]
    # Wherever the defining node stands (one of the two old versions read 'b' as outer here).
    unsorted = [helper.make_node("Neg", ["b"], ["t"]), helper.make_node("Abs", ["x"], ["b"])]
    assert reads(_if(unsorted, [helper.make_node("Abs", ["x"], ["e"])])) == ["c", "x", "x"]


def test_nested_subgraphs_read_through_every_scope():
    inner = _if([helper.make_node("Neg", ["m"], ["t"])], [helper.make_node("Abs", ["a"], ["e"])])
    inner.output[0] = "t"
    outer = _if(
        [helper.make_node("Neg", ["x"], ["m"]), inner], [helper.make_node("Abs", ["x"], ["e"])]
    )
    # Outer else: x; outer then: x, and the inner If's c and a ('m' is the outer then's own).
    assert reads(outer) == ["c", "x", "x", "c", "a"]


@pytest.mark.parametrize("body_input", ["v", "a"], ids=["outer", "shadowed"])
def test_loop_body_reads_outer_names_its_inputs_do_not_shadow(body_input):
    body = helper.make_graph(
        [
            helper.make_node("Add", [body_input, "a"], ["v_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            value_info("i", [], TensorProto.INT64),
            value_info("cond_in", [], TensorProto.BOOL),
            value_info(body_input, [2]),
        ],
        [value_info("cond_out", [], TensorProto.BOOL), value_info("v_out", [2])],
    )
    loop = helper.make_node("Loop", ["trip", "", "x"], ["y"], body=body)
    assert reads(loop) == (["trip", "x", "a"] if body_input == "v" else ["trip", "x"])
    model = make_model(
        [helper.make_node("Relu", ["x"], ["a"]), loop],
        [value_info("x", [2])],
        [value_info("y", [2])],
        [const("trip", 3, np.int64)],
    )
    y = session(model).run(None, {"x": np.array([1.0, 2.0], np.float32)})[0]
    # With 'a' shadowed the body doubles its own value: 8·x; else it adds the outer a = x: 4·x.
    np.testing.assert_allclose(y, [4.0, 8.0] if body_input == "v" else [8.0, 16.0])


@pytest.mark.parametrize("then_first", [False, True])
@pytest.mark.parametrize("cond", [True, False])
def test_a_sibling_branchs_names_are_not_in_scope(cond, then_first):
    """The then branch's initializer 'a' shadows the outer 'a' only in the then branch.

    The old repair version let it hide the else branch's read of the outer 'a' when the then
    branch came first among the attributes: the If below, placed before the node making 'a',
    then looked sorted and was not moved.
    """
    node = _if(
        [helper.make_node("Neg", ["a"], ["t"])],
        [helper.make_node("Abs", ["a"], ["e"])],
        then_inits=[const("a", [10.0, 20.0])],
        then_first=then_first,
    )
    assert reads(node) == ["c", "a"]
    relu = helper.make_node("Relu", ["x"], ["a"])
    model = _model([node, relu], cond)
    assert not is_sorted(model.graph)
    assert topological_sort(model.graph)
    assert [n.op_type for n in model.graph.node] == ["Relu", "If"]
    onnx.checker.check_model(model)
    x = np.array([-1.0, 2.0], np.float32)
    want = [-10.0, -20.0] if cond else [0.0, 2.0]  # else: |relu(x)|, the outer 'a'
    np.testing.assert_allclose(session(model).run(None, {"x": x})[0], want)
    proto, _, notes = read_model(_model([node, relu], cond))
    assert any("topological order" in note for note in notes)
    np.testing.assert_allclose(session(proto).run(None, {"x": x})[0], want)
