"""The README gallery: every picture it shows exists, and the gallery script rebuilds it from a quick run."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from landscape.figures import gallery

ROOT = Path(__file__).resolve().parents[1]


def test_every_picture_of_the_readme_exists_and_is_small():
    text = (ROOT / "README.md").read_text()
    inside = text.split(gallery.START, 1)[1].split(gallery.END, 1)[0]
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", inside)
    assert len(pictures) >= 8
    for picture in pictures:
        path = ROOT / picture
        assert path.is_file(), picture
        assert path.stat().st_size < 150_000, picture  # thumbnails, not the figures


def test_the_gallery_is_rebuilt_from_the_quick_figures(quick_figures, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{gallery.START}\nold\n{gallery.END}\n\nafter\n")
    assert gallery.main([str(quick_figures), "--images", str(tmp_path / "g"), "--readme", str(readme),
                         "--width", "300"]) == 0
    text = readme.read_text()
    assert "old" not in text and text.endswith("after\n")
    outputs = json.loads((quick_figures / "manifest.json").read_text())["outputs"]
    drawn = [o for o in outputs.values() if any(f.endswith(".png") for f in o["files"])]
    assert len(drawn) >= 8
    for out in drawn:
        png = next(f for f in out["files"] if f.endswith(".png"))
        assert out["command"] in text and f"g/{png}" in text
        with Image.open(tmp_path / "g" / png) as image:
            assert image.width == 300 and image.height > 50
