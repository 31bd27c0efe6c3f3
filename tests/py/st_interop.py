#!/usr/bin/env python3
"""Interop between tensorbit's safetensors code and the official Python package.

1. tensorbit writes (st_fixture, to a file and to a pipe) -> Python reads:
   every dtype, names, shapes, metadata and every byte must match.
2. Python writes (safetensors.numpy.save_file, every numpy-representable
   dtype) -> tensorbit reads (tb-inspect --tensor NAME --json, from the file
   and from stdin): every value must match exactly.

usage: st_interop.py TB_BIN TB_HELPERS"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors import deserialize, safe_open
from safetensors.numpy import save_file

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"]
SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1}


def expected_bytes(i, dt):
    n = 15 * SIZES[dt]
    b = bytes(((k * 131 + i * 17 + 7) & 0xFF) for k in range(n))
    return bytes(x & 1 for x in b) if dt == "BOOL" else b


def check_tb_written(data, label):
    tensors = dict(deserialize(data))
    assert sorted(tensors) == sorted("t." + d for d in DTYPES), (label, sorted(tensors))
    for i, dt in enumerate(DTYPES):
        t = tensors["t." + dt]
        assert t["dtype"] == dt, (label, dt, t["dtype"])
        assert list(t["shape"]) == [3, 5], (label, dt, t["shape"])
        assert bytes(t["data"]) == expected_bytes(i, dt), (label, dt)
    print(f"ok: {label}: {len(DTYPES)} dtypes written by tensorbit read back byte-exact")


def main():
    tb_bin, helpers = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fixture.safetensors")
        subprocess.run([os.path.join(helpers, "st_fixture"), path], check=True)
        check_tb_written(open(path, "rb").read(), "file")
        with safe_open(path, framework="numpy") as f:
            assert f.metadata() == {"fixture": "1"}, f.metadata()
        piped = subprocess.run([os.path.join(helpers, "st_fixture"), "-"], check=True, capture_output=True).stdout
        check_tb_written(piped, "stdout stream")

        rng = np.random.default_rng(0)
        arrays = {
            "f64": rng.standard_normal((4, 7)),
            "f32": rng.standard_normal((3, 5)).astype(np.float32),
            "f16": rng.standard_normal((2, 3, 4)).astype(np.float16),
            "i64": rng.integers(-2**62, 2**62, (5,), dtype=np.int64) // 1024 * 1024,
            "i32": rng.integers(-2**31, 2**31 - 1, (6,), dtype=np.int32) // 256 * 256,
            "i16": rng.integers(-2**15, 2**15, (6,), dtype=np.int16),
            "i8": rng.integers(-128, 128, (6,), dtype=np.int8),
            "u8": rng.integers(0, 256, (6,), dtype=np.uint8),
            "bool": rng.integers(0, 2, (6,)).astype(bool),
            "empty": np.zeros((0, 3), dtype=np.float32),
        }
        ppath = os.path.join(tmp, "py.safetensors")
        save_file(arrays, ppath, metadata={"writer": "python"})
        for source in ("file", "stdin"):
            for name, arr in arrays.items():
                cmd = [os.path.join(tb_bin, "tb-inspect"), "--json", "--tensor", name]
                if source == "file":
                    out = subprocess.run(cmd + [ppath], check=True, capture_output=True).stdout
                else:
                    out = subprocess.run(cmd + ["-"], check=True, capture_output=True,
                                         stdin=open(ppath, "rb")).stdout
                got = json.loads(out)
                assert got["shape"] == list(arr.shape), (name, got["shape"])
                # tensorbit converts to f32 for compute: compare with numpy's f32 view of the same values
                # (printed with 9 significant digits, which round-trips f32 exactly)
                want = arr.astype(np.float32).ravel()
                have = np.array(got["values"], dtype=np.float64).astype(np.float32)
                assert have.shape == want.shape and np.array_equal(have, want), (source, name, have[:5], want[:5])
            print(f"ok: {len(arrays)} tensors written by Python read by tb-inspect from {source}, values exact")
        listing = json.loads(subprocess.run([os.path.join(tb_bin, "tb-inspect"), "--json", ppath],
                                            check=True, capture_output=True).stdout)
        assert listing["metadata"] == {"writer": "python"}, listing["metadata"]
        assert listing["n_tensors"] == len(arrays)


if __name__ == "__main__":
    main()
