"""Guest console output shown on the operator's terminal, made inert.

A guest writes whatever it likes to its serial console; printed raw, escape sequences could recolour,
retitle or clear the operator's terminal, move the cursor over earlier lines, answer-back (device status
reports) or hide text (a lone CR, bidi overrides). On a terminal, `sealbox logs` therefore shows every
control character, C1 control, format character and undecodable byte as a visible escape (\\x1b, \\r,
\\u202e, \\xff); newlines and tabs stay, serial CRLF becomes LF. Raw bytes go to pipes and `--raw`.
With `colour=True`
(a terminal, no NO_COLOR) plain SGR sequences (ESC [ digits and ';' m: colour and bold, which cannot move the
cursor, retitle or answer back) pass through; everything else is still escaped.
"""

from __future__ import annotations

import codecs
import re

_SGR = re.compile(r"\x1b\[[0-9;]{0,32}m")
_PARTIAL_SGR = re.compile(r"\x1b(\[[0-9;]{0,32})?$")


class TerminalEscaper:
    """Incremental: feed chunks as they arrive (a UTF-8 sequence or CRLF may be split between them)."""

    def __init__(self, colour: bool = False) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="backslashreplace")
        self._cr = False  # a CR at the end of the last chunk: CRLF or a lone CR, decided by the next one
        self._colour = colour
        self._held = ""  # colour mode: the start of an SGR sequence split between chunks

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = self._decoder.decode(data, final)
        if self._cr:
            text = "\r" + text
            self._cr = False
        if text.endswith("\r") and not final:
            text, self._cr = text[:-1], True
        text = text.replace("\r\n", "\n")
        if not self._colour:
            return _escape(text).encode()
        text, self._held = self._held + text, ""
        m = _PARTIAL_SGR.search(text[-40:])
        if m and not final:
            text, self._held = text[: len(text) - len(m.group(0))], m.group(0)
        out, last = [], 0
        for sgr in _SGR.finditer(text):
            out += [_escape(text[last:sgr.start()]), sgr.group(0)]
            last = sgr.end()
        out.append(_escape(text[last:]))
        return "".join(out).encode()

    def flush(self) -> bytes:
        return self.feed(b"", final=True)


def _escape(text: str) -> str:
    out = []
    for ch in text:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}" if ch != "\r" else "\\r")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
    return "".join(out)
