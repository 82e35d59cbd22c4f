"""Adjust the bundle's ONNX graph for TensorRT's parser, without changing what it computes.

The export permutes the uint8 frames NHWC -> NCHW and then casts them to float. TensorRT restricts
UINT8 tensors to network I/O and Cast layers, so a Transpose on UINT8 can fail to build. Casting first
and transposing the float tensor is the same computation (the cast is exact for 0..255).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto


def cast_input_first(model: onnx.ModelProto, input_name: str) -> tuple[onnx.ModelProto, bool]:
    """(model, changed): swap `input -> Transpose -> Cast(float)` into `input -> Cast(float) -> Transpose`."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = list(model.graph.node)
    users = [n for n in nodes if input_name in n.input]
    if len(users) != 1 or users[0].op_type != "Transpose":
        return model, False
    transpose = users[0]
    after = [n for n in nodes if transpose.output[0] in n.input]
    if len(after) != 1 or after[0].op_type != "Cast" or transpose.output[0] in {o.name for o in model.graph.output}:
        return model, False
    cast = after[0]
    to = next(a.i for a in cast.attribute if a.name == "to")
    if to not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        return model, False
    middle = transpose.output[0]  # now the cast float tensor, still (N, H, W, C)
    transpose.input[0], cast.input[0] = middle, input_name
    cast.output[0], transpose.output[0] = middle, cast.output[0]
    # Cast must precede Transpose in the node list (ONNX wants topological order).
    i, j = nodes.index(transpose), nodes.index(cast)
    nodes[i], nodes[j] = nodes[j], nodes[i]
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in nodes]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    # The middle tensor changed type (uint8 -> float); drop its stale value_info.
    keep = [v for v in model.graph.value_info if v.name != middle]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    onnx.checker.check_model(model)
    return model, True


def prepare_for_tensorrt(onnx_bytes: bytes, input_name: str) -> bytes:
    model, _ = cast_input_first(onnx.load_from_string(onnx_bytes), input_name)
    return model.SerializeToString()
