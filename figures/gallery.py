"""The README's gallery: small PNGs of the figures ``landscape figures all --quick`` made, with the command under each.

::

    landscape figures all --quick --out /tmp/figs
    python -m landscape.figures.gallery /tmp/figs --images docs/gallery --readme README.md

reads ``/tmp/figs/manifest.json``, writes each figure's PNG shrunk to at most ``--width`` pixels
(palette PNG, a few tens of KB each) into ``--images`` and replaces the part of ``--readme``
between ``<!-- gallery -->`` and ``<!-- /gallery -->`` with a table of them: the figure's title,
the picture, and the command that drew it (run from the ``--out`` folder of ``figures all``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from PIL import Image

from landscape.files import atomic_write

START, END = "<!-- gallery -->", "<!-- /gallery -->"


def thumbnail(source: Path, target: Path, width: int) -> None:
    """``source`` shrunk to ``width`` pixels wide (aspect kept), as a 256-colour PNG at ``target``."""
    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > width:
            image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
        image.quantize(256).save(target, optimize=True)


def section(outputs: dict, images: Path, readme: Path, width: int, figures: Path) -> str:
    """The gallery's Markdown (and its thumbnails written to ``images``)."""
    images.mkdir(parents=True, exist_ok=True)
    lines = [START, "", "Made by `landscape figures all --quick --out figs` (digits, CPU, about 75 s); each command "
             "below redraws one figure from `figs/`.", ""]
    for name, out in outputs.items():
        png = next((f for f in out["files"] if f.endswith(".png")), None)
        if png is None:
            continue
        target = images / png
        thumbnail(figures / png, target, width)
        lines += [f"**{out['title']}**", "", f"![{name}]({target.relative_to(readme.parent).as_posix()})", "",
                  "```bash", out["command"], "```", ""]
    return "\n".join(lines + [END])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landscape.figures.gallery", description=__doc__.split("\n")[0])
    parser.add_argument("figures", type=Path, help="the --out folder of `landscape figures all --quick`")
    parser.add_argument("--images", type=Path, default=Path("docs/gallery"), help="where the thumbnails go")
    parser.add_argument("--readme", type=Path, default=Path("README.md"), help="the file with the gallery markers")
    parser.add_argument("--width", type=int, default=720, help="thumbnail width in pixels (default: 720)")
    args = parser.parse_args(argv)
    outputs = json.loads((args.figures / "manifest.json").read_text())["outputs"]
    text = args.readme.read_text()
    if START not in text or END not in text:
        parser.error(f"{args.readme} has no {START} ... {END} markers")
    gallery = section(outputs, args.images, args.readme, args.width, args.figures)
    updated = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: gallery, text, flags=re.S)
    atomic_write(args.readme, lambda tmp: tmp.write_text(updated))
    print(f"wrote {args.readme} and {len(list(args.images.glob('*.png')))} pictures in {args.images}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
