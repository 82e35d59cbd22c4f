"""Rewrite a bundle's ONNX graph to compute in FP16, keeping its uint8 input and float32 outputs.

Used to check, on any CPU, what a GPU's FP16 engine does to the scores (edge/tools/fp16_check.py). Every
float tensor becomes float16 except where an op is asked to stay float32 (`keep_fp32_ops`) or an
input must be float32 by the ONNX spec (Resize's roi and scales); Casts are inserted at each border.
This is the conservative model of a TensorRT FP16 build, which may pick FP16 for any layer.

We rewrite by type inference rather than use onnxconverter-common: its 1.16 release mislabels a
Cast-to-float output and a graph output that also feeds another node, both of which our graph has.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

FLOAT, FLOAT16 = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
# (op type, input index) that the ONNX spec types as float32 whatever the data's type.
FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


class Fp16Report(dict):
    """Counts of what the conversion did: initializers converted, values clamped, casts inserted."""


def float_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor, from the graph and ONNX shape inference."""
    inferred = shape_inference.infer_shapes(model, strict_mode=False)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def to_fp16_tensor(tensor: TensorProto, report: Fp16Report) -> TensorProto:
    values = numpy_helper.to_array(tensor)
    clamped = np.clip(values, -FP16_MAX, FP16_MAX)  # beyond +-65504 fp16 has only inf
    report["clamped"] = report.get("clamped", 0) + int(np.count_nonzero(clamped != values))
    return numpy_helper.from_array(clamped.astype(np.float16), tensor.name)


def convert_to_fp16(model: onnx.ModelProto, keep_fp32_ops: tuple[str, ...] = ()) -> tuple[onnx.ModelProto, Fp16Report]:
    """A new model computing in float16 (except keep_fp32_ops), with the same input and output types."""
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never touch the caller's copy
    g = model.graph
    for node in g.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"node {node.name or node.op_type} has a subgraph; this converter handles flat graphs only")
    types = float_types(model)
    report = Fp16Report(initializers=0, clamped=0, casts=0, kept_fp32=0)
    nodes = list(g.node)
    kept = {k for k, n in enumerate(nodes) if n.op_type in keep_fp32_ops}  # by position: protobuf wrappers have no stable id
    report["kept_fp32"] = len(kept)

    def wants(k: int, index: int) -> int:
        return FLOAT if k in kept or (nodes[k].op_type, index) in FP32_INPUTS else FLOAT16

    # Domain of each float tensor after conversion: 16 unless a kept node or a graph input makes it.
    domain: dict[str, int] = {v.name: FLOAT for v in g.input if types.get(v.name) == FLOAT}
    consumers: dict[str, list[tuple[int, int]]] = {}
    for k, node in enumerate(nodes):
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((k, i))
    for init in g.initializer:
        if init.data_type == FLOAT and any(wants(n, i) == FLOAT16 for n, i in consumers.get(init.name, [])):
            init.CopyFrom(to_fp16_tensor(init, report))
            report["initializers"] += 1
            domain[init.name] = FLOAT16
        elif init.data_type == FLOAT:
            domain[init.name] = FLOAT
    for k, node in enumerate(nodes):
        fp16 = k not in kept
        for out in node.output:
            if types.get(out) == FLOAT:
                domain[out] = FLOAT16 if fp16 else FLOAT
        if not fp16:
            continue
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = FLOAT16
            elif node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(to_fp16_tensor(attr.t, report))

    # Graph outputs stay float32: the producer writes "<name>.fp16" and a Cast restores "<name>".
    renamed = {o.name: f"{o.name}.fp16" for o in g.output if domain.get(o.name) == FLOAT16}
    for node in nodes:
        node.input[:] = [renamed.get(n, n) for n in node.input]
        node.output[:] = [renamed.get(n, n) for n in node.output]
    for old, new in renamed.items():
        domain[new] = domain.pop(old)

    new_nodes: list[onnx.NodeProto] = []
    made: set[str] = set()
    for k, node in enumerate(nodes):
        for i, name in enumerate(node.input):
            target = wants(k, i)
            have = domain.get(name)
            if have is None or have == target:
                continue
            cast = f"{name}.to{'32' if target == FLOAT else '16'}"
            if cast not in made:
                new_nodes.append(helper.make_node("Cast", [name], [cast], to=target, name=f"{cast}.cast"))
                made.add(cast)
            node.input[i] = cast
        new_nodes.append(node)
    for old, new in renamed.items():
        new_nodes.append(helper.make_node("Cast", [new], [old], to=FLOAT, name=f"{old}.cast"))
    report["casts"] = len(made) + len(renamed)
    new_nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in new_nodes]  # detach before clearing
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale types; ONNX Runtime infers them again
    onnx.checker.check_model(model)
    return model, report
