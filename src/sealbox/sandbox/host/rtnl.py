"""Two rtnetlink requests made by hand, in the calling thread's network namespace.

Used where pyroute2 cannot help: in a thread that has just unshared its network namespace (the
namespace has no name yet, and pyroute2's `netns=` works by name through a helper process), and to
read a link's alias without forking one such helper per namespace during `gc`. A netlink socket
belongs to the namespace of the thread that creates it, so both functions open their own.
"""

from __future__ import annotations

import os
import socket
import struct

RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
IFLA_IFALIAS = 20
IFF_UP = 0x1
_HDR = struct.Struct("IHHII")  # nlmsghdr
_IFI = struct.Struct("BxHiII")  # ifinfomsg
_ATTR = struct.Struct("HH")  # rtattr


def _request(msg_type: int, flags: int, index: int, if_flags: int = 0, change: int = 0, attrs: bytes = b"") -> bytes:
    body = _IFI.pack(socket.AF_UNSPEC, 0, index, if_flags, change) + attrs
    msg = _HDR.pack(_HDR.size + len(body), msg_type, NLM_F_REQUEST | flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE) as s:
        s.settimeout(5)
        s.bind((0, 0))
        s.sendto(msg, (0, 0))
        reply = s.recv(65536)
    if len(reply) < _HDR.size:
        raise OSError("short rtnetlink reply")
    _length, rtype, _f, _seq, _pid = _HDR.unpack_from(reply)
    if rtype == NLMSG_ERROR:
        (err,) = struct.unpack_from("i", reply, _HDR.size)
        if err:
            raise OSError(-err, os.strerror(-err))
    return reply


def _attr(kind: int, data: bytes) -> bytes:
    raw = _ATTR.pack(_ATTR.size + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def set_link(index: int, *, up: bool, alias: str) -> None:
    """Set link `index` up (or down) and give it `alias` (IFLA_IFALIAS, at most 255 bytes)."""
    _request(RTM_NEWLINK, NLM_F_ACK, index, IFF_UP if up else 0, IFF_UP, _attr(IFLA_IFALIAS, alias.encode() + b"\0"))


def link_alias(index: int) -> str | None:
    """The alias of link `index` (None if it has none)."""
    reply = _request(RTM_GETLINK, 0, index)
    pos = _HDR.size + _IFI.size
    length = _HDR.unpack_from(reply)[0]
    while pos + _ATTR.size <= min(length, len(reply)):
        alen, kind = _ATTR.unpack_from(reply, pos)
        if alen < _ATTR.size:
            break
        if kind == IFLA_IFALIAS:
            return reply[pos + _ATTR.size:pos + alen].rstrip(b"\0").decode(errors="replace")
        pos += (alen + 3) & ~3
    return None
