"""Draw the app store images: icon.png (128x128) and logo.png (250x100).

Our own drawing: a wallbox with a lightning bolt and its cable, on Home Assistant blue.
Needs Pillow (a tool for this script only, not a dependency of the service):

    python -m pip install pillow && python scripts/draw_icons.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
SCALE = 4  # draw large, then downsample: smooth edges without an SVG renderer
BLUE = (3, 169, 244, 255)
DARK_BLUE = (2, 119, 189, 255)
WHITE = (255, 255, 255, 255)
INK = (33, 33, 33, 255)
YELLOW = (255, 193, 7, 255)


def _box(values: tuple[float, float, float, float], origin: tuple[float, float], size: float) -> list[float]:
    """A box given in units of a 128-unit square, placed at origin and scaled to size (in pixels)."""
    ox, oy = origin
    f = size / 128 * SCALE
    return [ox * SCALE + values[0] * f, oy * SCALE + values[1] * f, ox * SCALE + values[2] * f, oy * SCALE + values[3] * f]


def draw_mark(draw: ImageDraw.ImageDraw, origin: tuple[float, float], size: float) -> None:
    """The mark in a size x size square at origin (pixels of the final image)."""
    f = size / 128 * SCALE
    ox, oy = origin[0] * SCALE, origin[1] * SCALE

    def pt(x: float, y: float) -> tuple[float, float]:
        return ox + x * f, oy + y * f

    draw.rounded_rectangle(_box((4, 4, 124, 124), origin, size), radius=26 * f, fill=BLUE)
    draw.rounded_rectangle(_box((4, 66, 124, 124), origin, size), radius=26 * f, fill=DARK_BLUE)
    draw.rectangle(_box((4, 66, 124, 90), origin, size), fill=DARK_BLUE)
    # the wallbox
    draw.rounded_rectangle(_box((26, 22, 76, 106), origin, size), radius=10 * f, fill=WHITE)
    draw.rounded_rectangle(_box((34, 30, 68, 46), origin, size), radius=4 * f, fill=INK)
    bolt = [pt(55, 52), pt(40, 76), pt(50, 76), pt(45, 96), pt(62, 70), pt(52, 70), pt(57, 52)]
    draw.polygon(bolt, fill=YELLOW)
    # the cable, from the side of the box down to a plug
    width = int(6 * f)
    draw.arc(_box((58, 40, 110, 96), origin, size), start=-90, end=60, fill=WHITE, width=width)
    draw.rounded_rectangle(_box((84, 86, 100, 108), origin, size), radius=4 * f, fill=WHITE)
    draw.rectangle(_box((87, 108, 90, 114), origin, size), fill=WHITE)
    draw.rectangle(_box((94, 108, 97, 114), origin, size), fill=WHITE)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    for name in ("DejaVuSans-Bold.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def render(width: int, height: int, paint) -> Image.Image:
    big = Image.new("RGBA", (width * SCALE, height * SCALE), (0, 0, 0, 0))
    paint(ImageDraw.Draw(big))
    return big.resize((width, height), Image.Resampling.LANCZOS)


def icon() -> Image.Image:
    return render(128, 128, lambda d: draw_mark(d, (0, 0), 128))


def logo() -> Image.Image:
    def paint(d: ImageDraw.ImageDraw) -> None:
        draw_mark(d, (2, 4), 92)
        d.text((104 * SCALE, 14 * SCALE), "OCPP", font=_font(40 * SCALE), fill=INK)
        d.text((105 * SCALE, 62 * SCALE), "Central System", font=_font(15 * SCALE), fill=DARK_BLUE)

    return render(250, 100, paint)


def main() -> None:
    icon().save(ROOT / "icon.png", optimize=True)
    logo().save(ROOT / "logo.png", optimize=True)
    print(f"wrote {ROOT / 'icon.png'} and {ROOT / 'logo.png'}")


if __name__ == "__main__":
    main()
