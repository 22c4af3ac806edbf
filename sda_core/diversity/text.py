"""Text on images with Pillow's built-in font, legible from 64 px tiles to 1024 px tiles.

Pillow >= 10.1 can scale its built-in font (`ImageFont.load_default(size=...)`, needs FreeType).
Older Pillow, or Pillow without FreeType, only has an ~11 px bitmap font; there we draw at its
native size and enlarge by an integer factor (nearest neighbour), so text still scales.
The built-in font covers little beyond ASCII (no em dash, no accents): other characters are
shown as their closest ASCII (`printable`) instead of as empty boxes.
"""
from __future__ import annotations

import unicodedata
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

BITMAP_PX = 11  # nominal size of Pillow's bitmap fallback font
MIN_PX = 10


@lru_cache(maxsize=64)
def _font(px: int) -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, int]:
    """(font, integer enlargement factor) for text `px` pixels tall."""
    try:
        return ImageFont.load_default(size=px), 1
    except (TypeError, ImportError, OSError):  # Pillow < 10.1, or no FreeType
        return ImageFont.load_default(), max(1, round(px / BITMAP_PX))


# Stand-ins for characters the built-in font lacks that reports commonly use.
ASCII_STAND_INS = {"—": "-", "–": "-", "−": "-", "×": "x", "→": "->", "≥": ">=", "≤": "<=", "µ": "u", "τ": "tau"}


def _ink(font: ImageFont.ImageFont | ImageFont.FreeTypeFont, ch: str) -> bytes:
    canvas = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(canvas).text((8, 8), ch, font=font, fill=255)
    return canvas.tobytes()


@lru_cache(maxsize=4096)
def has_glyph(ch: str) -> bool:
    """Whether the built-in font draws `ch` (rather than its missing-glyph box)."""
    font, _ = _font(20)
    return ch.isspace() or _ink(font, ch) != _ink(font, "\uffff")


def printable(text: str) -> str:
    """`text` with characters the font lacks replaced by ASCII stand-ins (accents dropped, else '?')."""
    out = []
    for ch in text:
        if has_glyph(ch):
            out.append(ch)
        else:
            plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
            out.append(ASCII_STAND_INS.get(ch) or plain or "?")
    return "".join(out)


def line_height(px: int) -> int:
    """Vertical advance between lines of `px`-sized text."""
    font, scale = _font(px)
    top, bottom = font.getbbox("Ag|")[1::2]
    return int((bottom - top) * scale * 1.3) + 1


def text_width(text: str, px: int) -> int:
    font, scale = _font(px)
    text = printable(text)
    if not text:
        return 0
    left, _, right, _ = font.getbbox(text)
    return int((right - left) * scale) + 1


def wrap(text: str, px: int, max_width: int) -> list[str]:
    """Word-wrap to `max_width` pixels; words longer than a line are split by characters."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate, px) <= max_width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = ""
            for ch in word:  # the word alone may still be too wide
                if line and text_width(line + ch, px) > max_width:
                    lines.append(line)
                    line = ""
                line += ch
        lines.append(line)
    return lines


def draw_text(
    image: Image.Image, xy: tuple[int, int], text: str, px: int, fill: tuple[int, int, int] = (255, 255, 255)
) -> None:
    """Draw one line with its ink box starting at `xy` (top-left)."""
    text = printable(text)
    if not text:
        return
    font, scale = _font(px)
    left, top, right, bottom = font.getbbox(text)
    if scale == 1:
        ImageDraw.Draw(image).text((xy[0] - left, xy[1] - top), text, font=font, fill=fill)
        return
    mask = Image.new("L", (right - left + 1, bottom - top + 1), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255)
    mask = mask.resize((mask.width * scale, mask.height * scale), Image.NEAREST)
    image.paste(Image.new("RGB", mask.size, fill), xy, mask)


def draw_lines(
    image: Image.Image,
    xy: tuple[int, int],
    lines: list[str],
    px: int,
    fill: tuple[int, int, int] = (255, 255, 255),
    *,
    center_width: int | None = None,
) -> None:
    """Draw lines top to bottom; centred in `center_width` pixels when given."""
    x, y = xy
    step = line_height(px)
    for line in lines:
        dx = (center_width - text_width(line, px)) // 2 if center_width else 0
        draw_text(image, (x + max(dx, 0), y), line, px, fill)
        y += step
