"""`mmsearch demo`'s folder: the installed demo photos under the README's names, with captions."""
from mmsearch.cli.demo import CAPTIONS, write_demo_folder


def test_the_demo_folder_holds_the_26_photos_under_short_names_with_two_captions(tmp_path):
    folder = tmp_path / "demo-photos"
    assert write_demo_folder(folder) == 26
    names = sorted(p.name for p in folder.iterdir())
    photos = [n for n in names if not n.endswith(".txt")]
    assert len(photos) == 26 and "imagenet_04.jpg" in photos and "chelsea.png" in photos
    assert [n for n in photos if n.startswith("imagenet_")] == [f"imagenet_{i:02d}.jpg" for i in range(20)]
    assert {n for n in names if n.endswith(".txt")} == {"coffee.txt", "astronaut.txt"}
    assert (folder / "coffee.txt").read_text().strip() == CAPTIONS["coffee.png"]
    assert (folder / "chelsea.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (folder / "chelsea.png").write_bytes(b"kept")  # a second run copies only what is missing
    assert write_demo_folder(folder) == 26 and (folder / "chelsea.png").read_bytes() == b"kept"
