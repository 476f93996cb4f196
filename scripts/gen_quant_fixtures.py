#!/usr/bin/env python3
"""Writes the bit-exact (de)quantization fixtures for kiln-kernels.

For every GGML type that the `gguf` package (gguf-py, llama.cpp's Python
library) can decode, this makes a few blocks of deterministic random bytes,
with every f16 scale field overwritten by a finite value, decodes them with
`gguf.quants.dequantize`, and stores input and output. For every type that
gguf-py can encode, it quantizes a deterministic f32 input (random blocks plus
edge cases: zeros, constants, ties, exact halves, tiny and large magnitudes)
with `gguf.quants.quantize` and stores both.

`kernels/tests/quant.rs` reads the files and compares f32 bit patterns, so
no Python runs at test time. Regenerate (deterministic, same bytes) with:

    pip install gguf numpy
    python3 scripts/gen_quant_fixtures.py

File format (little-endian), one file per (kind, type):

    magic      4 bytes  b"KQF1"
    kind       u32      0 = dequant (bytes -> f32), 1 = quant (f32 -> bytes)
    ggml_type  u32      GGML type id
    n_values   u32      number of f32 values
    n_bytes    u32      number of encoded bytes
    bytes      n_bytes  encoded blocks (input for dequant, expected for quant)
    values     n_values f32 (expected for dequant, input for quant)

Named `dequant_<type>.bin` / `quant_<type>.bin` after ggml's type names.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf import quants

OUT = Path(__file__).resolve().parent.parent / "kernels" / "tests" / "fixtures" / "quant"

# Byte offsets of the f16 scale fields inside one block (ggml-common.h).
F16_FIELDS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q8_0: (0,),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
    T.IQ4_NL: (0,),
    T.IQ4_XS: (0,),
}

# Values per dequant fixture: enough blocks to hit every scale/bit path.
N_VALUES = {T.F32: 256, T.F16: 256, T.BF16: 256}
DEFAULT_LEGACY_VALUES = 16 * 32
DEFAULT_K_VALUES = 4 * 256

QUANTIZABLE = (T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0)


def write(kind: int, qtype: T, encoded: np.ndarray, values: np.ndarray) -> None:
    encoded = np.ascontiguousarray(encoded, dtype=np.uint8).reshape(-1)
    values = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    name = ("dequant_" if kind == 0 else "quant_") + qtype.name.lower() + ".bin"
    header = b"KQF1" + struct.pack("<4I", kind, int(qtype), values.size, encoded.size)
    (OUT / name).write_bytes(header + encoded.tobytes() + values.tobytes())
    print(f"{name}: {values.size} values, {encoded.size} bytes")


def finite_f16(rng: np.random.Generator, n: int) -> np.ndarray:
    """Half typical scales (|d| in [1e-4, 0.1], both signs), half arbitrary
    finite bit patterns (subnormals, zeros and 65504 included)."""
    typical = (rng.uniform(1e-4, 0.1, n) * rng.choice([-1.0, 1.0], n)).astype(np.float16)
    bits = rng.integers(0, 0x10000, n, dtype=np.uint32).astype(np.uint16)
    bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0x83FF, bits)  # exponent 31 -> 0
    wild = bits.view(np.float16)
    return np.where(rng.random(n) < 0.5, typical, wild).astype(np.float16)


def dequant_input(qtype: T, rng: np.random.Generator) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if qtype == T.F32:
        bits = rng.integers(0, 1 << 32, N_VALUES[qtype], dtype=np.uint64).astype(np.uint32)
        bits = np.where((bits & 0x7F800000) == 0x7F800000, bits & 0x807FFFFF, bits)  # no NaN/inf
        bits[:4] = [0x00000000, 0x80000000, 0x00000001, 0x7F7FFFFF]
        return bits.view(np.uint8)
    if qtype == T.F16:
        vals = finite_f16(rng, N_VALUES[qtype])
        vals[:4] = [np.inf, -np.inf, 0.0, -0.0]
        return vals.view(np.uint8)
    if qtype == T.BF16:
        bits = rng.integers(0, 0x10000, N_VALUES[qtype], dtype=np.uint32).astype(np.uint16)
        bits = np.where((bits & 0x7F80) == 0x7F80, bits & 0x807F, bits)  # no NaN/inf
        bits[:3] = [0x7F80, 0xFF80, 0x8000]  # +inf, -inf, -0
        return bits.view(np.uint8)
    n_values = DEFAULT_K_VALUES if block_size == 256 else DEFAULT_LEGACY_VALUES
    n_blocks = n_values // block_size
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint16).astype(np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off : off + 2] = finite_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks


def quant_input(rng: np.random.Generator) -> np.ndarray:
    """16 blocks of 32 values: random ones plus the cases where rounding,
    tie-breaking or zero handling could differ."""
    blocks = [rng.standard_normal(32) * 10.0 ** rng.uniform(-3, 2) for _ in range(8)]
    blocks.append(np.zeros(32))  # all zero: d = 0, id = 0
    blocks.append(np.full(32, 0.7))  # constant: Q4_1 d = 0
    tie = rng.standard_normal(32)
    tie[3], tie[20] = -4.0, 4.0  # |max| tie: the first (negative) one wins
    blocks.append(tie)
    # Q8_0: amax 127 -> d = 1, so k + 0.5 are exact halves (round away).
    blocks.append(np.concatenate([[127.0], np.arange(-15.5, 15.5, 1.0)]))
    # Q4_0: max -2 -> d = 0.25, id = 4: quarter steps and eighth steps hit
    # x * id + 8.5 on and between integers.
    blocks.append(np.concatenate([[-2.0], np.arange(-31, 31, 2) / 16.0]))
    blocks.append(rng.standard_normal(32) * 1e-6)  # f16-subnormal scales
    blocks.append(rng.standard_normal(32) * 3e4)  # scales near f16's top
    outlier = rng.standard_normal(32) * 0.01
    outlier[17] = 50.0
    blocks.append(outlier)
    return np.concatenate(blocks).astype(np.float32)


def special_float_input(rng: np.random.Generator) -> np.ndarray:
    """For F16/BF16 encoding: random magnitudes plus ties, overflow and
    subnormals (BF16 also gets NaNs, which it must keep and quieten)."""
    x = (rng.standard_normal(256) * 10.0 ** rng.uniform(-8, 6, 256)).astype(np.float32)
    bits = x.view(np.uint32)
    # Exact round-to-even ties for BF16 (low half 0x8000) and F16 (13 low bits 0x1000).
    bits[0:4] = [0x3F808000, 0x3F818000, 0x3F801000, 0x3F803000]
    x[4:8] = [1e6, -1e6, 6e-8, -3e-8]  # F16 overflow to inf, F16 subnormal/zero
    x[8:10] = [np.inf, -np.inf]
    return x


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for i, qtype in enumerate([T.F32, T.F16, T.BF16, *F16_FIELDS]):
        rng = np.random.default_rng(1000 + i)
        encoded = dequant_input(qtype, rng)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        rows = encoded.reshape(-1, type_size * (256 // block_size if block_size < 256 else 1))
        values = quants.dequantize(rows, qtype)
        assert values.dtype == np.float32
        write(0, qtype, encoded, values)

    for i, qtype in enumerate(QUANTIZABLE):
        rng = np.random.default_rng(2000 + i)
        values = special_float_input(rng) if qtype in (T.F16, T.BF16) else quant_input(rng)
        if qtype == T.BF16:
            nan_bits = np.array([0x7FC00000, 0xFFC00001, 0x7F800001, 0x7FA5A5A5], dtype=np.uint32)
            values[10:14] = nan_bits.view(np.float32)
        # The 3e4 block overflows f16 on purpose (Q4_1/Q5_1 `m`, F16 itself):
        # both sides must agree on the infinities too.
        with np.errstate(over="ignore"):
            encoded = quants.quantize(values.reshape(-1, 32), qtype)
        write(1, qtype, np.asarray(encoded).view(np.uint8), values)
    return 0


if __name__ == "__main__":
    sys.exit(main())
