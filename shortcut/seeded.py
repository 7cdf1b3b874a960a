"""Seeded noise: a counter-based generator that a CUDA graph can replay with a new seed.

Noise is a pure function of (seed, stream, element index): a counter-based integer hash (lowbias32) turned
into normals by Box-Muller. No generator state is read or advanced, so a replay with seed s gives the same
noise as `seeded_noise(s, shape)` on any device (up to the last-bit rounding of log/cos), the same seed
always gives the same images, and the first b samples of a batch do not depend on the batch size. Streams
give one seed several independent draws (GraphSampler: stream 0 the starting noise, stream i + 1 the
re-noising after step i of a consistency sampler).
"""
import math
import numbers

import torch

_M32 = 0xFFFFFFFF


def _mul32(x, c):
    """x·c mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c; split in 16-bit halves so no
    product leaves int64 (x·c itself can reach 2^64)."""
    return (x * (c & 0xFFFF) + ((x * (c >> 16)) & 0xFFFF) * 65536) & _M32


def _hash32(x):
    """lowbias32 (C. Wellons' integer hash): a bijection of [0, 2^32) with near-ideal avalanche. Works on
    int64 tensors and on Python ints alike."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _counter_hashes(numel, device):
    """Hashes of the counters 0 .. 2·numel − 1 (two uniforms per normal): seed-independent, precomputed."""
    return _hash32(torch.arange(2 * numel, dtype=torch.int64, device=device))


def _seeded_normal(counter_hashes, seed, shape, dtype, stream=0):
    """N(0, 1) noise of `shape` from precomputed counter hashes and an int64 seed tensor (1,). stream: a
    Python int ≥ 0; stream 0 is the seed's own key, stream i > 0 the key re-hashed with hash(i) (hash32 is a
    bijection with hash(0) = 0, so every stream has its own key)."""
    key = _hash32(_hash32(seed >> 32) ^ (seed & _M32))                      # (1,) 64-bit seed -> 32 bits
    if stream:
        key = _hash32(key ^ _hash32(stream & _M32))
    bits = _hash32(counter_hashes ^ key) >> 8                               # (2n,) 24 random bits each
    u = (bits.to(torch.float32) + 0.5) * 2.0 ** -24                         # uniform in (0, 1), exact
    u1, u2 = u.view(-1, 2).unbind(1)                                        # (n,), (n,)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)  # Box-Muller, |z| < 5.9
    return z.view(shape).to(dtype)


def check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")
    return int(seed)


def seeded_noise(seed, shape, device="cpu", dtype=torch.float32, stream=0):
    """Standard-normal noise that is a pure function of (seed, stream, element index): what `GraphSampler(...,
    seeded=True)` draws inside its graph. Element j of the flattened tensor uses counters 2j and 2j + 1,
    so a prefix of the batch does not depend on the batch size. Not torch.randn's stream."""
    seed = check_seed(seed)
    if isinstance(stream, bool) or not isinstance(stream, numbers.Integral) or not 0 <= stream < 2 ** 32:
        raise ValueError(f"stream must be an int in [0, 2**32), got {stream!r}")
    shape = tuple(shape)
    s = torch.full((1,), seed, dtype=torch.int64, device=device)
    return _seeded_normal(_counter_hashes(math.prod(shape), s.device), s, shape, dtype, int(stream))
