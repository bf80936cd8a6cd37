"""The compact encoding: bit-identical round trips, the encoding chosen, file-size formulas, and
refusal of corrupt, truncated or tampered data."""

from __future__ import annotations

import math

import pytest
import torch

from ticketlab.deploy.format import (decode_state, decode_tensor, encode_state, encode_tensor, pack_bits,
                                     unpack_bits)
from ticketlab.errors import TicketlabError
from ticketlab.select import NMPattern, select

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                      b.reshape(-1).view(torch.uint8))


def sparse(shape, density, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    return torch.where(torch.rand(shape, generator=g) < density, w, torch.zeros(())).to(dtype)


def roundtrip(tensor):
    encoded = encode_tensor(tensor)
    return encoded, decode_tensor(encoded.parts, encoded.info)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("density", [1.0, 0.7, 0.5, 0.1, 0.02, 0.0])
@pytest.mark.parametrize("shape", [(64, 96), (7, 13, 3, 3), (1000,), (3, 50)])
def test_roundtrip_is_bit_identical(dtype, density, shape):
    tensor = sparse(shape, density, dtype)
    _, decoded = roundtrip(tensor)
    assert same_bits(decoded, tensor)


def test_signed_zeros_nan_and_inf_survive():
    tensor = sparse((40, 40), 0.2)
    tensor[0, :5] = torch.tensor([-0.0, float("nan"), float("inf"), -float("inf"), -0.0])
    tensor[5] = -0.0 * torch.ones(40)      # what multiplying negative weights by a 0 mask leaves
    encoded, decoded = roundtrip(tensor)
    assert encoded.info["encoding"] != "dense" and "negzero" in encoded.parts
    assert same_bits(decoded, tensor)


def test_ticketlab_masks_write_positive_zeros():
    from ticketlab.masks import Mask

    layer = torch.nn.Linear(64, 64)
    Mask({"weight": torch.rand(64, 64) < 0.1}).apply_(layer)
    encoded = encode_tensor(layer.weight.detach())
    assert "negzero" not in encoded.parts


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8), (2, 8)])
@pytest.mark.parametrize("transposed", [False, True])
def test_nm_tensors_use_the_tighter_nm_encoding(n, m, transposed):
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    weight = weight * select({"w": weight.abs()}, pattern=NMPattern(n, m))["w"]
    weight = weight + 0.0                      # +0.0 zeros, as ticketlab writes them
    if transposed:
        weight = weight.t().contiguous()       # GPT-2 Conv1D orientation: groups along dim 0
    encoded, decoded = roundtrip(weight)
    assert encoded.info["encoding"] == "nm" and (encoded.info["n"], encoded.info["m"]) == (n, m)
    assert encoded.info["axis"] == (0 if transposed else 1)
    index_bits = 8 * encoded.parts["index"].numel() / weight.numel()
    assert index_bits <= math.log2(math.comb(m, n)) / m * 1.25  # within 25% of the entropy of the pattern
    assert same_bits(decoded, weight)


def test_nm_groups_with_fewer_non_zeros_still_roundtrip():
    weight = torch.zeros(8, 16)
    weight[0, 0] = 1.0                     # a group with one non-zero under 2:4
    weight[1, 4:6] = torch.tensor([2.0, 3.0])
    encoded, decoded = roundtrip(weight)
    assert same_bits(decoded, weight)


@pytest.mark.parametrize("dtype, density, limit", [
    (torch.float32, 0.5, 0.54), (torch.float16, 0.5, 0.57), (torch.float32, 0.1, 0.14),
    (torch.float16, 0.1, 0.17), (torch.bfloat16, 0.1, 0.17),
])
def test_file_size_formulas(dtype, density, limit):
    """Bitmask + values: 1/(8b) + d of the dense bytes (LZMA lowers it further at low densities)."""
    tensor = sparse((256, 1024), density, dtype, seed=3)
    encoded = encode_tensor(tensor)
    dense_bytes = tensor.numel() * tensor.element_size()
    kept = int((tensor != 0).sum())
    bitmask_bytes = math.ceil(tensor.numel() / 8) + kept * tensor.element_size()
    assert encoded.nbytes <= bitmask_bytes
    assert encoded.nbytes / dense_bytes <= limit
    if density <= 0.1:
        assert encoded.info["encoding"] == "bitmask-lzma"


def test_dense_and_small_and_integer_tensors_stay_dense():
    for tensor in (torch.randn(64, 64), torch.zeros(4, 4), torch.arange(100), torch.tensor(3.0)):
        encoded, decoded = roundtrip(tensor)
        assert encoded.info["encoding"] == "dense" and same_bits(decoded, tensor)


def test_pack_bits_layout():
    flags = torch.tensor([1, 0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    packed = pack_bits(flags)
    assert packed.tolist() == [0b10000001, 0b00000001]
    assert torch.equal(unpack_bits(packed, 9), flags)


def test_state_roundtrip_keeps_names_and_order():
    state = {"b.weight": sparse((32, 32), 0.1), "a.bias": torch.randn(32), "c.steps": torch.tensor(5)}
    tensors, metadata = encode_state(state)
    decoded = decode_state(tensors, metadata, "test")
    assert list(decoded) == list(state) and all(same_bits(decoded[k], state[k]) for k in state)


def _encoded_state():
    return encode_state({"w": sparse((64, 64), 0.1), "v": sparse((64, 64), 0.5)})


@pytest.mark.parametrize("tamper, message", [
    (lambda t, m: t.__setitem__("w::values", t["w::values"] * 2), "checksum"),
    (lambda t, m: t.__setitem__("v::values", t["v::values"][:-1].clone()), "checksum"),
    (lambda t, m: t.pop("w::values"), "wrong parts"),
    (lambda t, m: t.__setitem__("x::dense", torch.ones(2)), "does not describe"),
    (lambda t, m: m.__setitem__("version", 99), "version 99"),
    (lambda t, m: m.__setitem__("format", "other"), "not a ticketlab compact"),
    (lambda t, m: m["tensors"]["w"].__setitem__("encoding", "zip"), "wrong parts|unknown encoding"),
    (lambda t, m: m["tensors"]["v"].__setitem__("shape", [64, 65]), "stored positions|checksum|size"),
    (lambda t, m: m["tensors"]["v"].__setitem__("dtype", "complex7"), "unknown dtype"),
])
def test_tampered_data_is_refused(tamper, message):
    tensors, metadata = _encoded_state()
    tamper(tensors, metadata)
    with pytest.raises(TicketlabError, match=message):
        decode_state(tensors, metadata, "test")


def test_lzma_bombs_are_bounded():
    import lzma

    tensors, metadata = _encoded_state()
    bomb = lzma.compress(b"\0" * (10 << 20))
    tensors["w::mask"] = torch.frombuffer(bytearray(bomb), dtype=torch.uint8)
    metadata["tensors"]["w"]["sha256"] = __import__("ticketlab.deploy.format", fromlist=["_digest"])._digest(
        {"mask": tensors["w::mask"], "values": tensors["w::values"]})
    with pytest.raises(TicketlabError, match="wrong size"):
        decode_state(tensors, metadata, "test")
