"""``diffusers-client edit``: a GenerateImageRequest that edits from reference images.

Without ``--mask`` every ``--ref`` goes in ``ref_images``, in order (LocalAI's image
endpoint). With ``--mask`` the request takes LocalAI's inpainting layout: ``src`` is the JSON
``{"image", "mask_image"}`` (sent inline as a ``data:`` URI, so no temporary file) and
``ref_images = [first reference, mask]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from typing import Any


def add_edit_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``edit`` command's own arguments (beside the generation ones)."""
    parser.add_argument("--ref", action="append", default=[], required=True,
                        help="reference image (repeatable; order kept)")
    parser.add_argument("--mask", default="",
                        help="inpainting mask (white = repaint) for the first --ref")


def _b64_file(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode()


def edit_request(pb: Any, args: argparse.Namespace) -> Any:
    """GenerateImageRequest from the ``edit`` arguments."""
    refs = [os.path.abspath(r) for r in args.ref]
    src = ""
    if args.mask:
        mask = os.path.abspath(args.mask)
        body = json.dumps({"image": _b64_file(refs[0]), "mask_image": _b64_file(mask)})
        src = "data:application/json;base64," + base64.b64encode(body.encode()).decode()
        refs = [refs[0], mask]
    return pb.GenerateImageRequest(
        positive_prompt=args.prompt, negative_prompt=args.negative, width=args.width,
        height=args.height, step=args.steps, seed=args.seed, dst=os.path.abspath(args.output),
        src=src, ref_images=refs)
