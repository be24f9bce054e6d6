"""Data set loaders: tiny data sets in every layout, cleaning rules, splits, and bad data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.errors import UserError
from models.training.data import load_dataset, seeded_split
from scripts.media import make_video, require_tools
from stream import cli


# ------------------------------------------------------------------------------------------ builders
def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(path)
    return path


def write_manifest(root: Path, rows: list[dict], name: str = "data.jsonl") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def image_manifest(root: Path) -> Path:
    rows = []
    for i, (label, split) in enumerate([("positive", "train"), ("negative", "train"), ("neutral", "train"),
                                        ("positive", "valid"), ("negative", "test")]):
        write_image(root / "img" / f"{i}.png")
        rows.append({"id": f"a{i}", "image": f"img/{i}.png", "text": f"text {i}", "label": label, "split": split})
    rows.append({"id": "s1", "image": "img/0.png", "text": "scored", "score": 0.6, "split": "train"})
    rows.append({"id": "s2", "image": "img/0.png", "text": "scored", "score": -0.05, "split": "test"})
    return write_manifest(root, rows)


def mvsa_dir(root: Path, lines: list[str], ids: list[int]) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    header = "ID\ttext,image" + ("\ttext,image" * (lines[0].count("\t") - 1) if lines else "")
    (root / "labelResultAll.txt").write_text("\n".join([header, *lines]) + "\n")
    for i in ids:
        write_image(root / "data" / f"{i}.jpg")
        # Latin-1 bytes, as some MVSA tweets are: must still load.
        (root / "data" / f"{i}.txt").write_bytes(f"tweet {i} caf\xe9 #tag\n".encode("latin-1"))
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    require_tools("ffmpeg")
    d = tmp_path_factory.mktemp("videos")
    for name, colour in (("a", "red"), ("b", "blue")):
        make_video(d / f"{name}.mp4", 3.0, size=(64, 48), fps=10, pattern=f"color=c={colour}")
    return d


def chsims_dir(root: Path, videos: Path, rows: list[str]) -> Path:
    for vid, clip in (("video_0001", "0001"), ("video_0001", "0002"), ("video_0002", "0001")):
        target = root / "Raw" / vid / f"{clip}.mp4"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((videos / "a.mp4").read_bytes())
    header = "video_id,clip_id,text,label,label_T,label_A,label_V,annotation,mode"
    (root / "label.csv").write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return root


# ------------------------------------------------------------------------------------------- layouts
def test_manifest_with_images(tmp_path):
    ds = load_dataset(image_manifest(tmp_path))
    assert ds.layout == "manifest" and len(ds.samples) == 7
    by_id = {s.id: s for s in ds.samples}
    assert by_id["a0"].image_path == (tmp_path / "img" / "0.png").resolve() and by_id["a0"].video_path is None
    assert by_id["s1"].label == "positive" and by_id["s2"].label == "neutral"  # scores map by the CH-SIMS thresholds
    assert ds.counts() == {"train": {"negative": 1, "neutral": 1, "positive": 2},
                           "valid": {"negative": 0, "neutral": 0, "positive": 1},
                           "test": {"negative": 1, "neutral": 1, "positive": 0}}
    assert by_id["a3"].source.endswith("data.jsonl:4")
    # A directory holding one manifest is the same data set.
    assert [s.id for s in load_dataset(tmp_path).samples] == [s.id for s in ds.samples]


def test_manifest_without_splits_gets_seeded_8_1_1(tmp_path):
    write_image(tmp_path / "x.png")
    rows = [{"id": i, "image": "x.png", "text": "t", "label": "neutral"} for i in range(50)]
    path = write_manifest(tmp_path, rows)
    a, b, c = (load_dataset(path, seed=s) for s in (7, 7, 8))
    assert [s.split for s in a.samples] == [s.split for s in b.samples] != [s.split for s in c.samples]
    assert {k: sum(v.values()) for k, v in a.counts().items()} == {"train": 40, "valid": 5, "test": 5}
    assert seeded_split(10, 0).count("train") == 8


def test_manifest_with_video(tmp_path, videos):
    rows = [{"id": "v1", "video": str(videos / "a.mp4"), "text": "great", "label": "positive", "split": "train"},
            {"id": "v2", "video": str(videos / "b.mp4"), "text": "", "score": -0.8, "split": "valid"}]
    ds = load_dataset(write_manifest(tmp_path, rows))
    assert [s.video_path.name for s in ds.samples] == ["a.mp4", "b.mp4"]
    assert [s.label for s in ds.samples] == ["positive", "negative"] and ds.samples[1].text == ""


def test_mvsa_single_cleaning_and_split(tmp_path):
    lines = ["1\tpositive,positive", "2\tneutral,negative", "3\tpositive,negative", "4\tpositive,neutral",
             "5\tneutral,neutral", *[f"{i}\tnegative,negative" for i in range(6, 13)]]
    ds = load_dataset(mvsa_dir(tmp_path, lines, list(range(1, 13))), seed=3)
    assert ds.layout == "mvsa-single"
    labels = {s.id: s.label for s in ds.samples}
    assert "3" not in labels  # positive text vs negative image: dropped
    assert labels["1"] == "positive" and labels["2"] == "negative" and labels["4"] == "positive" and labels["5"] == "neutral"
    assert len(ds.samples) == 11
    assert {k: sum(v.values()) for k, v in ds.counts().items()} == {"train": 9, "valid": 1, "test": 1}
    assert ds.samples[0].text == "tweet 1 café #tag"
    assert [s.split for s in load_dataset(tmp_path, seed=3).samples] == [s.split for s in ds.samples]


def test_mvsa_multiple_majority(tmp_path):
    lines = [
        "1\tpositive,neutral\tpositive,positive\tneutral,positive",  # text pos (2/3), image pos (2/3) -> positive
        "2\tnegative,neutral\tnegative,neutral\tpositive,neutral",  # text neg, image neutral -> negative
        "3\tpositive,negative\tpositive,negative\tpositive,negative",  # conflict -> dropped
        "4\tpositive,neutral\tnegative,negative\tneutral,positive",  # no text majority -> dropped
        "5\tneutral,neutral\tneutral,positive\tneutral,neutral",  # neutral
    ]
    ds = load_dataset(mvsa_dir(tmp_path, lines, [1, 2, 3, 4, 5]))
    assert ds.layout == "mvsa-multiple"
    assert {s.id: s.label for s in ds.samples} == {"1": "positive", "2": "negative", "5": "neutral"}


def test_chsims(tmp_path, videos):
    rows = ["video_0001,0001,今天很开心,0.8,1,0.6,0.8,Positive,train",
            "video_0001,2,一般般,0.1,0,0,0.2,Neutral,valid",  # unpadded clip id still finds 0002.mp4
            "video_0002,0001,太糟糕了,-0.1,-0.2,0,0,Negative,test"]
    ds = load_dataset(chsims_dir(tmp_path, videos, rows))
    assert ds.layout == "ch-sims"
    assert [(s.id, s.label, s.split) for s in ds.samples] == [
        ("video_0001/0001", "positive", "train"), ("video_0001/2", "neutral", "valid"), ("video_0002/0001", "negative", "test")]
    assert ds.samples[1].video_path.name == "0002.mp4" and ds.samples[0].text == "今天很开心"


# ------------------------------------------------------------------------------------------ bad data
def _bad_manifest(tmp_path: Path, case: str) -> tuple[Path, str]:
    write_image(tmp_path / "ok.png")
    good = {"id": "1", "image": "ok.png", "text": "t", "label": "positive", "split": "train"}
    second = dict(good, id="2")
    if case == "missing_file":
        second["image"] = "nope.png"
        return write_manifest(tmp_path, [good, second]), r"data\.jsonl:2: image file not found: .*nope\.png"
    if case == "unknown_label":
        second["label"] = "happy"
        return write_manifest(tmp_path, [good, second]), r"data\.jsonl:2: unknown label 'happy'"
    if case == "bad_score":
        second.pop("label")
        second["score"] = 3
        return write_manifest(tmp_path, [good, second]), r"data\.jsonl:2: score 3 is not a number in \[-1, 1\]"
    if case == "bad_json":
        path = write_manifest(tmp_path, [good])
        path.write_text(path.read_text() + "\n{oops\n")
        return path, r"data\.jsonl:3: not valid JSON"
    if case == "unknown_split":
        second["split"] = "dev"
        return write_manifest(tmp_path, [good, second]), r"data\.jsonl:2: unknown split 'dev'"
    if case == "duplicate_id":
        return write_manifest(tmp_path, [good, good]), r"data\.jsonl:2: duplicate id '1' \(first at .*data\.jsonl:1\)"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_file", "unknown_label", "bad_score", "bad_json", "unknown_split", "duplicate_id"])
def test_bad_manifest_names_file_and_line(tmp_path, case):
    path, pattern = _bad_manifest(tmp_path, case)
    with pytest.raises(UserError, match=pattern):
        load_dataset(path)


def test_empty_split_and_unrecognised_layout(tmp_path):
    write_image(tmp_path / "ok.png")
    path = write_manifest(tmp_path, [{"id": "1", "image": "ok.png", "text": "t", "label": "positive", "split": "train"}])
    with pytest.raises(UserError, match=r"data\.jsonl: split 'valid' has no samples"):
        load_dataset(path, require=("train", "valid"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match=r"other: layout not recognised; expected a JSON Lines manifest"):
        load_dataset(tmp_path / "other")
    with pytest.raises(UserError, match="data not found"):
        load_dataset(tmp_path / "missing.jsonl")


def test_bad_native_layouts_name_file_and_line(tmp_path, videos):
    mvsa = mvsa_dir(tmp_path / "mvsa", ["1\tpositive,positive", "2\tpositive,happy"], [1, 2])
    with pytest.raises(UserError, match=r"labelResultAll\.txt:3: unknown label 'happy'"):
        load_dataset(mvsa)
    mvsa = mvsa_dir(tmp_path / "mvsa2", ["1\tpositive,positive", "2\tpositive,positive"], [1])
    with pytest.raises(UserError, match=r"labelResultAll\.txt:3: file not found: .*2\.jpg"):
        load_dataset(mvsa)
    sims = chsims_dir(tmp_path / "sims", videos, ["video_0001,0001,a,0.8,1,1,1,Positive,train",
                                                  "video_0009,0001,b,0.8,1,1,1,Positive,train"])
    with pytest.raises(UserError, match=r"label\.csv:3: video not found: .*video_0009"):
        load_dataset(sims)
    sims = chsims_dir(tmp_path / "sims2", videos, ["video_0001,0001,a,0.8,1,1,1,Positive,holdout"])
    with pytest.raises(UserError, match=r"label\.csv:2: unknown mode 'holdout'"):
        load_dataset(sims)


def test_cli_rejects_bad_data_before_training(tmp_path, capsys, repo_root):
    path, _ = _bad_manifest(tmp_path, "unknown_label")
    out = tmp_path / "ckpt"
    code = cli.main(["train", "--data", str(path), "--out", str(out), "--config", str(repo_root / "configs" / "tiny-test.yaml")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "data.jsonl:2: unknown label 'happy'" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # nothing was trained or written


# ------------------------------------------------------------------------------------------ issue 15: hostile files
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height (1-bit grey) with almost no data: PIL sees the size on open."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [10_000, 40_000])  # 100 Mpx: PIL only warns; 1.6 Gpx: PIL raises
def test_decompression_bomb_image_is_one_line_error(tmp_path, side):
    from models.training.data import Sample
    from models.training.feature_cache import read_image

    bomb = _png_header_only(tmp_path / "bomb.png", side, side)
    sample = Sample("1", "t", "positive", "train", bomb, None, f"{tmp_path / 'data.jsonl'}:4")
    with pytest.raises(UserError, match=r"data\.jsonl:4: image .*bomb\.png is too large to decode") as err:
        read_image(sample)
    assert "\n" not in str(err.value)


def test_cli_train_refuses_a_bomb_image_with_exit_2(tmp_path, capsys, repo_root):
    write_image(tmp_path / "ok.png")
    _png_header_only(tmp_path / "bomb.png", 40_000, 40_000)
    rows = [{"id": str(i), "image": "ok.png", "text": "t", "label": "positive", "split": s} for i, s in enumerate(["train", "valid"])]
    rows.append({"id": "b", "image": "bomb.png", "text": "t", "label": "negative", "split": "train"})
    path = write_manifest(tmp_path, rows)
    code = cli.main(["train", "--data", str(path), "--out", str(tmp_path / "ckpt"), "--config", str(repo_root / "configs" / "tiny-test.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len([line for line in err if line.startswith("error:")]) == 1, err
    assert "data.jsonl:3: image" in err[-1] and "too large to decode" in err[-1] and not any("Traceback" in line for line in err)


def test_chsims_label_csv_not_utf8_names_the_line(tmp_path, videos):
    sims = chsims_dir(tmp_path / "sims", videos, ["video_0001,0001,a,0.8,1,1,1,Positive,train",
                                                  "video_0001,0002,b,0.8,1,1,1,Positive,train"])
    label = sims / "label.csv"
    label.write_bytes(label.read_bytes().replace(b",b,", b",caf\xe9,"))  # Latin-1, as a re-saved CSV may be
    with pytest.raises(UserError, match=r"label\.csv:3: not UTF-8 text \(byte 0xe9\)"):
        load_dataset(sims)


def test_chsims_field_over_the_csv_limit_names_the_line(tmp_path, videos):
    import csv

    sims = chsims_dir(tmp_path / "sims", videos, ["video_0001,0001,a,0.8,1,1,1,Positive,train",
                                                  f"video_0001,0002,\"{'x' * (csv.field_size_limit() + 10)}\",0.8,1,1,1,Positive,train"])
    with pytest.raises(UserError, match=r"label\.csv:3: unreadable CSV \(field larger than field limit"):
        load_dataset(sims)
