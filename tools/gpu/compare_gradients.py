#!/usr/bin/env python3
"""Compares two safetensors files written by `onnx-lora gradients` (e.g. CPU vs CUDA), tensor by tensor.

For every key (the loss and each LoRA gradient): rel = ||a - b|| / ||b||; fails when any rel exceeds --rtol or the
key sets differ. Standard library only (runs where numpy is absent). A test peer, never on the product path.
Usage: compare_gradients.py REFERENCE.safetensors OTHER.safetensors [--rtol 1e-4] [--json OUT.json]
       compare_gradients.py --self-test
"""
import argparse
import array
import json
import math
import os
import struct
import sys
import tempfile


def read_safetensors(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        body = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor '{name}' is {info['dtype']}; expected F32")
        start, end = info["data_offsets"]
        values = array.array("f")
        values.frombytes(body[start:end])
        if sys.byteorder != "little":
            values.byteswap()
        tensors[name] = values
    return tensors


def relative_error(a, b):
    diff = math.sqrt(math.fsum((x - y) ** 2 for x, y in zip(a, b)))
    norm = math.sqrt(math.fsum(y * y for y in b))
    if any(math.isnan(x) for x in a) or any(math.isnan(y) for y in b):
        return float("nan")
    return diff / norm if norm > 0 else (0.0 if diff == 0 else float("inf"))


def compare(reference, other, rtol):
    a, b = read_safetensors(other), read_safetensors(reference)
    if set(a) != set(b):
        return {"ok": False, "error": f"key sets differ: only in reference {sorted(set(b) - set(a))[:5]}, only in other {sorted(set(a) - set(b))[:5]}"}
    rows = {}
    for name in sorted(b):
        if len(a[name]) != len(b[name]):
            return {"ok": False, "error": f"'{name}' has {len(a[name])} values vs {len(b[name])}"}
        rows[name] = relative_error(a[name], b[name])
    grads = {k: v for k, v in rows.items() if k != "loss"}
    worst = max(grads, key=lambda k: (math.isnan(grads[k]), grads[k])) if grads else None
    ok = all(not math.isnan(v) and v <= rtol for v in rows.values())
    return {"ok": ok, "rtol": rtol, "loss_rel": rows.get("loss"), "tensors": len(grads),
            "max_grad_rel": grads[worst] if worst else None, "worst": worst,
            "lora_A_max_rel": max((v for k, v in grads.items() if "lora_A" in k), default=None),
            "lora_B_max_rel": max((v for k, v in grads.items() if "lora_B" in k), default=None)}


def write_safetensors(path, tensors):
    header, body, offset = {}, b"", 0
    for name in sorted(tensors):
        data = array.array("f", tensors[name]).tobytes()
        header[name] = {"dtype": "F32", "shape": [len(tensors[name])], "data_offsets": [offset, offset + len(data)]}
        body += data
        offset += len(data)
    raw = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + body)


def self_test():
    with tempfile.TemporaryDirectory() as d:
        ref, same, off = (os.path.join(d, n) for n in ("r.st", "s.st", "o.st"))
        write_safetensors(ref, {"loss": [2.0], "m.lora_A.weight_grad": [1.0, -2.0, 3.0], "m.lora_B.weight_grad": [0.5, 0.25]})
        write_safetensors(same, {"loss": [2.0], "m.lora_A.weight_grad": [1.0, -2.0, 3.0], "m.lora_B.weight_grad": [0.5, 0.25]})
        write_safetensors(off, {"loss": [2.0], "m.lora_A.weight_grad": [1.0, -2.0, 3.01], "m.lora_B.weight_grad": [0.5, 0.25]})
        assert compare(ref, same, 1e-4)["ok"], "identical files must pass"
        r = compare(ref, off, 1e-4)
        assert not r["ok"] and r["worst"] == "m.lora_A.weight_grad" and abs(r["max_grad_rel"] - 0.01 / math.sqrt(14)) < 1e-6, r
    print("compare_gradients self-test: 2 passed, 0 failed")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("reference", nargs="?")
    p.add_argument("other", nargs="?")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--json")
    p.add_argument("--self-test", action="store_true")
    args = p.parse_args()
    if args.self_test:
        self_test()
        return 0
    result = compare(args.reference, args.other, args.rtol)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
