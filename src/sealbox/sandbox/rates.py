"""`--net-rate`, `--disk-rate`, `--disk-iops`: text -> RateLimit (Firecracker's token bucket, sandbox/model.py).

    --net-rate 10MiB/s           10 MiB per second, each direction; a bucket of one second's worth
    --disk-rate 50MB/s:200MB     50 MB/s on average; up to 200 MB may pass at once after a quiet spell
    --disk-iops 500[:2000]       operations per second [and the burst, in operations]

Units: B, KB/MB/GB (powers of 1000), KiB/MiB/GiB (powers of 1024), an optional `/s`. The burst is the bucket's
size and at least one second's worth: RateLimit(size=burst, refill_ms=burst*1000/rate), so every backend sees the
same average (size / refill_ms) and the same bucket: QEMU's throttling (bps/iops-total, -max for a burst),
nftables' policer on the TAP (host/nft.py) and Firecracker's rate_limiter (vmm/firecracker/config.py).
"""

from __future__ import annotations

import re

from sealbox.errors import UsageError
from sealbox.sandbox.model import RateLimit

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}
AMOUNT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
MAX_BYTES = 1 << 40  # 1 TiB/s: beyond any device; keeps every product far inside int64
MAX_OPS = 10**7


def _amount(text: str, flag: str, example: str) -> int:
    m = AMOUNT_RE.match(text)
    if not m:
        raise UsageError(f"{flag} {text!r}: {text.strip()!r} is not an amount", hint=f"e.g. {example} (units B, KB, MB, GB, KiB, MiB, GiB)")
    value = round(float(m.group(1)) * UNITS[(m.group(2) or "").lower()])
    if not 1 <= value <= MAX_BYTES:
        raise UsageError(f"{flag} {text!r} is out of range", hint="between 1 byte and 1 TiB")
    return value


def _bucket(rate: int, burst: int | None, flag: str, text: str, unit: str) -> RateLimit:
    if burst is None:
        return RateLimit(size=rate, refill_ms=1000)
    if burst < rate:
        raise UsageError(f"{flag} {text!r}: the burst ({burst} {unit}) is less than one second's worth ({rate} {unit})",
                         hint="give a burst of at least the rate, or none")
    return RateLimit(size=burst, refill_ms=round(burst * 1000 / rate))


def parse_rate(text: str, flag: str) -> RateLimit:
    """'RATE[/s][:BURST]' in bytes (see the module docstring)."""
    head, _, burst_text = text.partition(":")
    rate_text = re.sub(r"/s\s*$", "", head.strip(), flags=re.IGNORECASE)
    rate = _amount(rate_text, flag, "10MiB/s or 10MiB/s:20MiB")
    burst = _amount(burst_text, flag, "10MiB/s:20MiB") if burst_text else None
    return _bucket(rate, burst, flag, text, "bytes")


def parse_iops(text: str, flag: str = "--disk-iops") -> RateLimit:
    """'OPS[:BURST]' operations per second."""
    head, _, burst_text = text.partition(":")
    try:
        ops = int(re.sub(r"/s\s*$", "", head.strip()))
        burst = int(burst_text) if burst_text else None
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not OPS or OPS:BURST", hint="e.g. 500 or 500:2000 (operations per second)") from None
    if not 1 <= ops <= MAX_OPS or (burst is not None and not 1 <= burst <= MAX_OPS * 60):
        raise UsageError(f"{flag} {text!r} is out of range", hint=f"between 1 and {MAX_OPS} operations per second")
    return _bucket(ops, burst, flag, text, "operations")
