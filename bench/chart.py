"""A PNG bar chart of the ratios, written without any imaging library.

One row per metric: the label, a bar of podling/containerd (green when the issue's
target, or parity where it sets none, is met; orange otherwise), a black line at 1.0 and
a red tick at the target. Text uses a built-in 3x5 pixel font, drawn upper case.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

_GLYPHS = {
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011",
    "D": "110101101101110", "E": "111100110100111", "F": "111100110100100",
    "G": "011100101101011", "H": "101101111101101", "I": "111010010010111",
    "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010",
    "P": "110101110100100", "Q": "010101101110011", "R": "110101110101101",
    "S": "011100010001110", "T": "111010010010010", "U": "101101101101111",
    "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "0": "111101101101111",
    "1": "010110010010111", "2": "110001010100111", "3": "110001010001110",
    "4": "101101111001001", "5": "111100110001110", "6": "011100111101111",
    "7": "111001010010010", "8": "111101111101111", "9": "111101111001110",
    " ": "000000000000000", "(": "001010010010001", ")": "100010010010100",
    ",": "000000000010100", ".": "000000000000010", "+": "000010111010000",
    "/": "001001010100100", "-": "000000111000000", ":": "000010000010000",
    "<": "001010100010001", "=": "000111000111000", "?": "110001010000010",
}  # fmt: skip
Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREEN: Color = (60, 160, 80)
ORANGE: Color = (230, 140, 40)
RED: Color = (210, 40, 40)
SCALE, ROW, LABEL_CHARS, BAR_W, MAX_RATIO = 2, 22, 44, 420, 3.0


class Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.w, self.h = width, height
        self.px = [bytearray(WHITE * width) for _ in range(height)]

    def rect(self, x: int, y: int, w: int, h: int, color: Color) -> None:
        for row in self.px[max(0, y) : min(self.h, y + h)]:
            x0, x1 = max(0, x), min(self.w, x + w)
            row[3 * x0 : 3 * x1] = bytes(color) * (x1 - x0)

    def text(self, x: int, y: int, s: str, color: Color = BLACK) -> None:
        for i, ch in enumerate(s.upper()):
            bits = _GLYPHS.get(ch, _GLYPHS["?"])
            for n, bit in enumerate(bits):
                if bit == "1":
                    px, py = x + (i * 4 + n % 3) * SCALE, y + (n // 3) * SCALE
                    self.rect(px, py, SCALE, SCALE, color)

    def png(self) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        raw = b"".join(b"\0" + bytes(row) for row in self.px)
        header = struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def draw(ratios: dict[str, float], targets: dict[str, float | None], title: str) -> bytes:
    """The chart as PNG bytes; bars beyond MAX_RATIO are cut there (the label says how far)."""
    label_w = LABEL_CHARS * 4 * SCALE
    canvas = Canvas(label_w + BAR_W + 90, ROW * (len(ratios) + 2) + 10)
    canvas.text(8, 8, title)
    x0 = label_w + 10

    def x_of(r: float) -> int:
        return x0 + int(min(r, MAX_RATIO) / MAX_RATIO * BAR_W)

    bottom = ROW * (len(ratios) + 1) + 10
    canvas.rect(x_of(1.0), ROW + 8, 2, bottom - ROW - 8, BLACK)
    canvas.text(x_of(1.0) - 8, bottom + 4, "1.0")
    for i, (metric, ratio) in enumerate(ratios.items()):
        y = ROW * (i + 1) + 10
        goal = targets.get(metric)
        canvas.text(8, y + 4, metric[:LABEL_CHARS])
        good = ratio <= (goal if goal is not None else 1.0)
        canvas.rect(x0, y + 2, x_of(ratio) - x0, ROW - 6, GREEN if good else ORANGE)
        value = f"{ratio:.2f}"
        canvas.rect(x_of(ratio) + 4, y + 2, len(value) * 4 * SCALE + 2, 7 * SCALE, WHITE)
        canvas.text(x_of(ratio) + 6, y + 4, value)
        if goal is not None:
            canvas.rect(x_of(goal) - 1, y, 3, ROW - 2, RED)
    return canvas.png()


def write(
    path: Path, ratios: dict[str, float], targets: dict[str, float | None], title: str
) -> None:
    path.write_bytes(draw(ratios, targets, title))
