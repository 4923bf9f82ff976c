"""`mmsearch demo`: the demo photos into a folder and a `demo` collection, to try searching at once.

The photos are the real ones that two installed packages ship (nothing is downloaded): foolbox's
20 ImageNet validation photos (`imagenet_00.jpg` ... `imagenet_19.jpg`) and scikit-image's named
photos (`chelsea.png` the cat, `coffee.png`, ...). Two get a caption in a sidecar `.txt`, as a
user's own captioned photos would; the rest are searched through what the image model sees.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import click

from mmsearch.cli.ingest import ingest

SKIMAGE_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png", "retina.jpg")
CAPTIONS = {"coffee.png": "a cup of espresso on a saucer", "astronaut.png": "an astronaut in a white space suit"}


def _package_data(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException(f"the demo photos come with the {package!r} package, which is not "
                                   "installed here (make install installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def demo_photos() -> dict[str, Path]:
    """File name in the demo folder -> the installed photo it copies."""
    photos = {}
    for path in sorted(_package_data("foolbox").glob("imagenet_*.jpg")):  # imagenet_04_949.jpg
        photos[f"{'_'.join(path.stem.split('_')[:2])}.jpg"] = path  # -> imagenet_04.jpg
    skimage = _package_data("skimage")
    photos.update({name: skimage / name for name in SKIMAGE_PHOTOS if (skimage / name).exists()})
    return photos


def write_demo_folder(folder: Path) -> int:
    """Copy the demo photos and their caption sidecars into `folder`; how many photos it holds."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = demo_photos()
    for name, source in photos.items():
        if not (folder / name).exists():
            shutil.copyfile(source, folder / name)
    for name, caption in CAPTIONS.items():
        if name in photos:
            (folder / name).with_suffix(".txt").write_text(caption + "\n")
    return len(photos)


@click.command()
@click.option("-c", "--collection", default="demo", show_default=True, help="Collection to fill.")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-photos"),
              show_default=True, help="Folder the demo photos are written to.")
@click.pass_context
def demo(ctx: click.Context, collection: str, folder: Path) -> None:
    """Write the 26 demo photos into a folder and ingest them into a collection (created if
    needed), so that searches work at once. Run it again: what is there already is skipped."""
    count = write_demo_folder(folder)
    click.echo(f"{count} demo photos in {folder}/ (2 with a caption in a .txt beside them)", err=True)
    ctx.invoke(ingest, paths=(str(folder),), collection=collection, create=True)
