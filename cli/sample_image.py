"""``blackbox sample-image``: write a real photo bundled with installed packages."""
from __future__ import annotations

from .files import check_writable


def add_parser(sub) -> None:
    e = sub.add_parser("sample-image", help="write a real photo bundled with installed packages",
                       description="Write one of the real photos that ship inside installed packages "
                                   "(scikit-image, scikit-learn, matplotlib), for trying things offline.")
    e.add_argument("name", nargs="?", help="photo name (omit to list them)")
    e.add_argument("out", nargs="?", help="output file (default: NAME.png)")


def run(args) -> int:
    from blackbox.sample_images import SAMPLE_IMAGES, sample_image

    if not args.name:
        for name, source in SAMPLE_IMAGES.items():
            print(f"{name:14s} {source}")
        return 0
    out = args.out or f"{args.name}.png"
    check_writable(out, "the image")
    sample_image(args.name, out)
    print(f"wrote {out}")
    return 0
